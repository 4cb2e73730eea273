"""Merge several adapters into one whose delta is their weighted sum (kohya's merge_lora / svd_merge_lora).

- `concat`: the factors are stacked (rank = sum of the ranks): up = [w1·s1·B1 | w2·s2·B2 | ...] (the scale split
  as a square root between up and down), down = [A1; A2; ...], alpha = rank. Exact: ΔW = Σ wᵢ·ΔWᵢ.
  LoRA / LoCon only; LoHa, LoKr and DoRA deltas are not products of two factors.
- `svd`: each module's summed delta refactored to `rank` (`conv_rank` for 3x3 convs) by SVD, alpha = rank.
  LoRA inputs never form the dense delta (exact SVD through the stacked factors); LoHa / LoKr / DoRA inputs
  are summed as dense deltas (DoRA: its effective delta at scale 1, which needs the base model).
Modules present in only some inputs are merged with the inputs that have them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from sd_lora.errors import SdLoraError
from sd_lora.formats.detect import FAMILY_NAMES
from sd_lora.tools.deltas import (
    AdapterInput,
    is_lora_module,
    kernel_of,
    lora_factors,
    module_delta,
    module_shape,
    prediction_of,
    read_adapter,
)
from sd_lora.tools.output import WriteReport, check_output_path, parse_precision, write_adapter
from sd_lora.tools.svd import dense_svd, factor_svd, to_lora_params

__all__ = ["METHODS", "MergeReport", "parse_weighted", "merge_weights", "merge_adapters", "read_inputs"]

METHODS = ("concat", "svd")


@dataclass
class MergeReport:
    method: str
    inputs: list[tuple[str, float]]
    modules: int
    shared: int  # modules present in more than one input
    written: WriteReport

    def summary(self) -> str:
        srcs = " + ".join(f"{Path(p).name} x{w:g}" for p, w in self.inputs)
        return (f"merged {srcs} ({self.method}): {self.modules} modules, {self.shared} in several inputs\n"
                f"{self.written.summary()}")


def parse_weighted(spec) -> tuple[str, float]:
    """'FILE:0.7' -> ('FILE', 0.7); 'FILE' -> ('FILE', 1.0); (path, weight) tuples pass through."""
    if isinstance(spec, (tuple, list)):
        path, weight = spec
        return str(path), float(weight)
    spec = str(spec)
    head, sep, tail = spec.rpartition(":")
    if sep and head:
        try:
            weight = float(tail)
        except ValueError:
            return spec, 1.0
        if not math.isfinite(weight):
            raise SdLoraError(f"{spec}: the weight must be a finite number")
        return head, weight
    return spec, 1.0


def read_inputs(specs, family: str | None, allow_pickle: bool = False) -> list[tuple[AdapterInput, float]]:
    pairs = [parse_weighted(s) for s in specs]
    if not pairs:
        raise SdLoraError("no input adapters given.")
    inputs = [(read_adapter(p, family, allow_pickle=allow_pickle), w) for p, w in pairs]
    families = {a.family for a, _ in inputs}
    if len(families) > 1:
        named = ", ".join(f"{a.path.name} is {FAMILY_NAMES[a.family]}" for a, _ in inputs)
        raise SdLoraError(f"the inputs are for different model families ({named}); adapters of different families "
                          "cannot be merged.")
    return inputs


def _refuse_for_concat(inputs) -> None:
    for adapter, _ in inputs:
        if adapter.adapter_type in ("loha", "lokr", "dora"):
            kind = {"loha": "LoHa", "lokr": "LoKr", "dora": "DoRA"}[adapter.adapter_type]
            why = ("its magnitude renormalises the whole weight" if kind == "DoRA"
                   else "its delta is not a product of two low-rank factors")
            raise SdLoraError(f"{adapter.path}: --method concat stacks LoRA factors, and this is a {kind} file "
                              f"({why}); use --method svd --rank R.")


def _gather(inputs) -> dict[tuple[str, str], list[tuple[dict, float, AdapterInput]]]:
    modules: dict[tuple[str, str], list] = {}
    for adapter, weight in inputs:
        for component, path, params in adapter.modules():
            modules.setdefault((component, path), []).append((params, weight, adapter))
    return modules


def _shape(key, parts, family, shapes) -> tuple[int, ...]:
    found = {module_shape(key[0], key[1], p, family, shapes) for p, _, _ in parts}
    if len(found) > 1:
        names = ", ".join(a.path.name for _, _, a in parts)
        raise SdLoraError(f"{key[0]}.{key[1]}: the inputs ({names}) adapt it with different weight shapes "
                          f"{sorted(found)}; they were made for different models.")
    return found.pop()


def _concat(parts, shape) -> dict[str, torch.Tensor]:
    ups, downs = [], []
    for params, weight, _ in parts:
        up, down = lora_factors(params)  # up carries alpha / rank
        up = up * weight
        root = up.norm() / down.norm() if down.norm() > 0 else torch.tensor(1.0)
        # balance the factors' magnitudes (the product is unchanged), so fp16 keeps both well
        factor = torch.sqrt(root) if root > 0 else torch.tensor(1.0)
        ups.append(up / factor)
        downs.append(down * factor)
    up, down = torch.cat(ups, dim=1), torch.cat(downs, dim=0)
    rank = down.shape[0]
    if len(shape) == 4:
        up, down = up.reshape(shape[0], rank, 1, 1), down.reshape(rank, *shape[1:])
    return {"lora_A": down.contiguous(), "lora_B": up.contiguous(), "alpha": torch.tensor(float(rank))}


def _svd(key, parts, shape, rank: int, conv_rank: int, base) -> dict[str, torch.Tensor]:
    k = conv_rank if kernel_of(shape) > 1 else rank
    if all(is_lora_module(p) for p, _, _ in parts):
        factors = [lora_factors(p) for p, _, _ in parts]
        up = torch.cat([f[0] * w for f, (_, w, _) in zip(factors, parts)], dim=1)
        u, s, vh = factor_svd(up, torch.cat([f[1] for f in factors], dim=0))
    else:
        where = f"{key[0]}.{key[1]}"
        total = None
        for params, weight, adapter in parts:
            base_weight = base.weight(key[0], key[1], where) if base is not None and "dora_scale" in params else None
            d = module_delta(params, shape, base_weight, f"{adapter.path.name}: {where}") * weight
            total = d if total is None else total + d
        u, s, vh = dense_svd(total)
    return to_lora_params(u, s, vh, min(k, len(s)), shape)


def merge_weights(inputs, method: str = "concat", rank: int | None = None, conv_rank: int | None = None,
                  base=None, progress=None, dtype: torch.dtype = torch.float32):
    """The merged neutral weights (in `dtype`) of [(AdapterInput, weight)], and the number of shared modules."""
    if method not in METHODS:
        raise SdLoraError(f"unknown merge method {method!r}; expected one of {METHODS}")
    if method == "concat":
        _refuse_for_concat(inputs)
        if rank is not None or conv_rank is not None:
            raise SdLoraError("--rank / --conv-rank apply to --method svd only; concat keeps every input's rank "
                              "(the result's rank is their sum).")
    elif rank is None or rank < 1:
        raise SdLoraError("--method svd needs --rank R (a positive integer).")
    conv_rank = conv_rank or rank
    if method == "svd" and conv_rank < 1:
        raise SdLoraError("--conv-rank must be a positive integer.")
    family = inputs[0][0].family
    gathered = _gather(inputs)
    by_component: dict[str, dict] = {}
    for component, path in gathered:
        by_component.setdefault(component, {})[path] = None
    shapes = base.shapes(by_component) if base is not None else None
    out: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
    for i, (key, parts) in enumerate(gathered.items()):
        shape = _shape(key, parts, family, shapes)
        params = _concat(parts, shape) if method == "concat" else _svd(key, parts, shape, rank, conv_rank, base)
        out.setdefault(key[0], {})[key[1]] = {n: t.to(dtype) for n, t in params.items()}
        if progress:
            progress(i + 1, len(gathered), f"{key[0]}.{key[1]}")
    return out, sum(1 for parts in gathered.values() if len(parts) > 1)


def merge_adapters(inputs, output, *, method: str = "concat", rank: int | None = None, conv_rank: int | None = None,
                   family: str | None = None, model=None, save_precision="fp16", allow_pickle: bool = False,
                   progress=None) -> MergeReport:
    """Merge weighted adapter files (['A.safetensors:0.7', ('B.safetensors', 0.3)]) into `output`.

    `model` (path, hub id or pipeline) is needed for DoRA inputs with `svd`, and validates the result.
    """
    from sd_lora.tools.basemodel import load_base

    pairs = [parse_weighted(s) for s in inputs]
    check_output_path(output, [p for p, _ in pairs])
    read = read_inputs(pairs, family, allow_pickle)
    first = read[0][0]
    layouts = {repr(sorted(a.unet_config.items())) for a, _ in read}
    if len(layouts) > 1:
        raise SdLoraError("the SDXL inputs were made for UNets with different block layouts; they cannot be merged.")
    base = load_base(model, first.family, allow_pickle) if model is not None else None
    weights, shared = merge_weights(read, method, rank, conv_rank, base, progress, parse_precision(save_precision))
    sources = [(str(a.path), w) for a, w in read]
    tool = {"tool": "merge", "method": method, "inputs": [{"file": Path(p).name, "weight": w} for p, w in sources]}
    if method == "svd":
        tool.update(rank=rank, conv_rank=conv_rank or rank)
    comment = f"merged ({method}) from " + ", ".join(f"{Path(p).name} x{w:g}" for p, w in sources)
    written = write_adapter(output, weights, first.family, first.unet_config, save_precision=save_precision,
                            info={"prediction_type": prediction_of(read[0][0].metadata)}, tool=tool, comment=comment,
                            components=base.components if base is not None else None)
    return MergeReport(method, sources, sum(len(m) for m in weights.values()), shared, written)
