"""Lower an adapter's rank by SVD of each module's delta (kohya's resize_lora.py).

A fixed `rank` (3x3 convs: `conv_rank`, default `rank`) or a dynamic rule per module, with the meanings kohya
users know: sv_ratio keeps singular values >= max / X, sv_fro the smallest rank keeping fraction X of the
Frobenius norm, sv_cumulative the smallest rank whose singular-value sum reaches fraction X. A module never
grows. LoRA / LoCon modules keep their alpha / rank scale (alpha_new = scale · new rank, as kohya) and are
decomposed exactly through their factors; LoHa / LoKr / DoRA modules become LoRA modules of their full delta
(DoRA: needs the base model) with alpha = rank.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from sd_lora.errors import SdLoraError
from sd_lora.formats.names import module_to_community
from sd_lora.tools.deltas import (
    is_lora_module,
    kernel_of,
    module_delta,
    module_shape,
    prediction_of,
    read_adapter,
)
from sd_lora.tools.output import WriteReport, check_output_path, parse_precision, write_adapter
from sd_lora.tools.svd import check_rule, choose_rank, dense_svd, factor_svd, retained_fro, to_lora_params

__all__ = ["ResizeRow", "ResizeReport", "resize_weights", "resize_adapter", "input_rank"]


@dataclass
class ResizeRow:
    module: str  # community name
    old_rank: int
    new_rank: int
    retained: float  # fraction of the Frobenius norm kept


@dataclass
class ResizeReport:
    rows: list[ResizeRow]
    size_before: int
    size_after: int
    rule: dict
    written: WriteReport | None = None
    extra: dict = field(default_factory=dict)

    @property
    def mean_retained(self) -> float:
        return sum(r.retained for r in self.rows) / len(self.rows)

    @property
    def min_retained(self) -> float:
        return min(r.retained for r in self.rows)

    def as_dict(self) -> dict:
        return {"rule": self.rule, "modules": [r.__dict__ for r in self.rows],
                "summary": {"modules": len(self.rows), "mean_retained": self.mean_retained,
                            "min_retained": self.min_retained, "max_new_rank": max(r.new_rank for r in self.rows),
                            "size_before": self.size_before, "size_after": self.size_after},
                "output": str(self.written.path) if self.written else None}

    def table(self) -> str:
        width = max(len(r.module) for r in self.rows)
        lines = [f"{'module':<{width}}  old  new  retained"]
        lines += [f"{r.module:<{width}}  {r.old_rank:>3}  {r.new_rank:>3}  {100 * r.retained:7.2f}%" for r in self.rows]
        lines.append(f"{len(self.rows)} modules; retained Frobenius norm: mean {100 * self.mean_retained:.2f}%, "
                     f"min {100 * self.min_retained:.2f}%; file {self.size_before / 2**20:.2f} MiB -> "
                     f"{self.size_after / 2**20:.2f} MiB")
        return "\n".join(lines)


def input_rank(params: dict) -> int:
    for key in ("lora_A", "hada_w1_b", "lokr_w2_b", "lokr_w1_b"):
        if key in params:
            return int(params[key].shape[0])
    return 0


def _check_ranks(adapter, rank, conv_rank) -> None:
    linear = [input_rank(p) for c, path, p in adapter.modules()
              if is_lora_module(p) and kernel_of(module_shape(c, path, p, adapter.family)) == 1]
    conv = [input_rank(p) for c, path, p in adapter.modules()
            if is_lora_module(p) and kernel_of(module_shape(c, path, p, adapter.family)) > 1]
    if rank is not None and rank < 1 or conv_rank is not None and conv_rank < 1:
        raise SdLoraError("--rank / --conv-rank must be positive integers.")
    if rank is not None and linear and rank > max(linear):
        raise SdLoraError(f"{adapter.path}: --rank {rank} is above the input's rank ({max(linear)}); resize only "
                          "lowers ranks.")
    if conv_rank is not None and conv and conv_rank > max(conv):
        raise SdLoraError(f"{adapter.path}: --conv-rank {conv_rank} is above the input's conv rank ({max(conv)}).")


def _decompose(component, path, params, family, base):
    shape = module_shape(component, path, params, family, base.shapes({component: {path: None}}) if base else None)
    if is_lora_module(params):
        up = params["lora_B"].detach().to("cpu", torch.float32).flatten(1)
        down = params["lora_A"].detach().to("cpu", torch.float32).flatten(1)
        scale = float(params["alpha"].item()) / down.shape[0] if "alpha" in params else 1.0
        return shape, factor_svd(up, down), scale
    weight = base.weight(component, path) if base is not None and "dora_scale" in params else None
    return shape, dense_svd(module_delta(params, shape, weight, f"{component}.{path}")), 1.0


def resize_weights(adapter, *, rank: int | None = None, dynamic: str | None = None, param: float | None = None,
                   conv_rank: int | None = None, base=None, progress=None, dtype: torch.dtype = torch.float32,
                   consume: bool = False):
    """(resized neutral weights in `dtype`, [ResizeRow]) of an `AdapterInput`.

    `consume`: drop each input module once resized, so input and output are not both held whole."""
    if (rank is None) == (dynamic is None):
        raise SdLoraError("give either --rank R or --dynamic RULE --param X.")
    check_rule(dynamic, param)
    _check_ranks(adapter, rank, conv_rank)
    out, rows = {}, []
    total = adapter.num_modules
    keys = [(component, path) for component, path, _ in adapter.modules()]
    for i, (component, path) in enumerate(keys):
        # with `consume`, the input module is dropped here, so only the one being resized stays alive
        params = adapter.weights[component].pop(path) if consume else adapter.weights[component][path]
        shape, (u, s, vh), scale = _decompose(component, path, params, adapter.family, base)
        old = input_rank(params)
        cap = len(s) if not is_lora_module(params) else min(old, len(s))
        fixed = conv_rank if kernel_of(shape) > 1 and conv_rank is not None else rank
        k = choose_rank(s[:cap], dynamic, param, fixed) if dynamic else max(1, min(fixed, cap))
        if dynamic and kernel_of(shape) > 1 and conv_rank is not None:
            k = min(k, conv_rank)
        new = to_lora_params(u, s, vh, k, shape, scale=scale)
        out.setdefault(component, {})[path] = {n: t.to(dtype) for n, t in new.items()}
        rows.append(ResizeRow(module_to_community(component, path, adapter.family, adapter.unet_config),
                              old, k, retained_fro(s, k)))
        if progress:
            progress(i + 1, total, rows[-1].module)
    return out, rows


def resize_adapter(path, output, *, rank: int | None = None, dynamic: str | None = None, param: float | None = None,
                   conv_rank: int | None = None, family: str | None = None, model=None, save_precision="fp16",
                   allow_pickle: bool = False, progress=None) -> ResizeReport:
    """Resize the adapter file at `path` into `output`; returns the per-module table and the summary."""
    from sd_lora.tools.basemodel import load_base

    check_output_path(output, [path])
    adapter = read_adapter(path, family, allow_pickle=allow_pickle)
    base = load_base(model, adapter.family, allow_pickle) if model is not None else None
    weights, rows = resize_weights(adapter, rank=rank, dynamic=dynamic, param=param, conv_rank=conv_rank, base=base,
                                   progress=progress, dtype=parse_precision(save_precision), consume=True)
    old = max(r.old_rank for r in rows)
    rule = {"tool": "resize", "from": Path(path).name, "from_rank": old}
    rule.update({"dynamic": dynamic, "param": param} if dynamic else {"rank": rank})
    if conv_rank is not None:
        rule["conv_rank"] = conv_rank
    overrides = {}
    if dynamic:
        comment = f"dynamic resize with {dynamic}: {param} from {old}"
        top = max(rows, key=lambda r: r.new_rank)
        top_params = next(p for ms in weights.values() for p in ms.values() if p["lora_A"].shape[0] == top.new_rank)
        overrides = {"ss_network_dim": str(top.new_rank), "ss_network_alpha": str(float(top_params["alpha"]))}
    else:
        comment = f"resized to rank {rank}" + (f" (conv {conv_rank})" if conv_rank else "") + f" from {old}"
    written = write_adapter(output, weights, adapter.family, adapter.unet_config, save_precision=save_precision,
                            inherited=adapter.metadata, info={"prediction_type": prediction_of(adapter.metadata)},
                            tool=rule, comment=comment, overrides=overrides,
                            components=base.components if base is not None else None)
    before = Path(path).stat().st_size if Path(path).is_file() else sum(
        f.stat().st_size for f in Path(path).rglob("*") if f.is_file())
    return ResizeReport(rows, before, written.bytes, rule, written)
