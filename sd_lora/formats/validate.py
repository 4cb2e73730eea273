"""Check an adapter against the models it is meant for, before anything touches them.

Every module must exist, be a Linear or Conv2d, and get tensors whose shapes rebuild exactly its
weight's shape; no tensor may hold NaN or inf. All problems are collected and reported at once.
"""

from __future__ import annotations

import torch

from sd_lora.formats.community import AdapterWeights
from sd_lora.formats.lycoris import delta_weight
from sd_lora.formats.names import model_text_encoder_path

__all__ = ["resolve_modules", "check_shapes", "find_non_finite", "find_non_finite_keys", "find_rank_mismatches"]

# (factor, its rank axis, partner factor, its rank axis): the two halves of a low-rank product must agree
# (Tucker / CP factors keep the rank on axis 0 of both halves; those modules are checked on rebuilding.)
_RANK_PAIRS = (("lora_B", 1, "lora_A", 0), ("hada_w1_a", 1, "hada_w1_b", 0), ("hada_w2_a", 1, "hada_w2_b", 0),
               ("lokr_w1_a", 1, "lokr_w1_b", 0), ("lokr_w2_a", 1, "lokr_w2_b", 0))
_TUCKER_CORE = {"hada_w1_a": "hada_t1", "hada_w2_a": "hada_t2", "lokr_w1_a": "lokr_t1", "lokr_w2_a": "lokr_t2"}
_NAMES = {"lora_A": "down (lora_A)", "lora_B": "up (lora_B)"}


def _base(module: torch.nn.Module) -> torch.nn.Module:
    # a layer that already holds other adapters wraps the original module
    return module.get_base_layer() if hasattr(module, "get_base_layer") else module


def _lora_shapes(module: torch.nn.Module, rank: int) -> tuple[tuple, tuple]:
    weight = module.weight
    if isinstance(module, torch.nn.Conv2d):
        return (rank, weight.shape[1], *weight.shape[2:]), (weight.shape[0], rank, 1, 1)
    return (rank, weight.shape[1]), (weight.shape[0], rank)


def check_shapes(path: str, params: dict[str, torch.Tensor], module: torch.nn.Module) -> str | None:
    """None if `params` fit `module`, else what does not fit."""
    shape = tuple(module.weight.shape)
    if "lora_A" in params or "lora_B" in params:
        if "lora_A" not in params or "lora_B" not in params:
            return f"{path}: needs both down (lora_A) and up (lora_B) weights"
        down, up = params["lora_A"], params["lora_B"]
        want_down, want_up = _lora_shapes(module, down.shape[0])
        if tuple(down.shape) != want_down or tuple(up.shape) != want_up:
            return (f"{path}: down {list(down.shape)} / up {list(up.shape)} do not fit the layer "
                    f"{type(module).__name__} {list(shape)} (expected {list(want_down)} / {list(want_up)})")
        dora = params.get("dora_scale")
        if dora is not None and (dora.numel() != shape[0] or dora.shape[0] != shape[0]):
            if dora.numel() == shape[1] and dora.shape[0] == 1:
                return (f"{path}: dora_scale {list(dora.shape)} normalises over the input axis (LyCORIS / "
                        "AUTOMATIC1111 layout); peft's DoRA keeps one magnitude per output channel, so this file "
                        "cannot be applied exactly. Re-export it with the output-axis layout [out, 1].")
            return f"{path}: dora_scale {list(dora.shape)} does not fit the layer {list(shape)} (expected [{shape[0]}, 1])"
        return None
    meta = {k: v.to("meta") for k, v in params.items() if k != "alpha"}
    meta.update({"alpha": params["alpha"]} if "alpha" in params else {})
    try:
        delta = delta_weight(meta, shape)
    except (RuntimeError, KeyError, IndexError, ValueError) as e:
        return f"{path}: tensors {sorted(meta)} do not build a {list(shape)} weight ({str(e).splitlines()[0]})"
    return None if tuple(delta.shape) == shape else f"{path}: builds {list(delta.shape)}, layer is {list(shape)}"


def resolve_modules(
    weights: AdapterWeights, components: dict[str, torch.nn.Module]
) -> tuple[dict[str, dict[str, dict[str, torch.Tensor]]], list[str]]:
    """Weights keyed by the models' own module paths, and every problem found."""
    resolved: dict[str, dict[str, dict[str, torch.Tensor]]] = {}
    problems: list[str] = []
    for component, modules in weights.items():
        model = components.get(component)
        if model is None:
            problems.append(f"{component}: the file adapts it but the pipeline has no {component}")
            continue
        named = dict(model.named_modules())
        has_text_model = hasattr(model, "text_model")
        for path, params in modules.items():
            model_path = model_text_encoder_path(path, has_text_model) if component.startswith("text_encoder") else path
            module = named.get(model_path)
            if module is None:
                problems.append(f"{component}.{path}: no such module")
                continue
            module = _base(module)
            if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
                problems.append(f"{component}.{path}: is a {type(module).__name__}; only Linear and Conv2d adapt")
                continue
            problem = check_shapes(f"{component}.{path}", params, module)
            if problem:
                problems.append(problem)
                continue
            resolved.setdefault(component, {})[model_path] = params
    return resolved, problems


def find_non_finite(weights: AdapterWeights) -> list[str]:
    """`component.module` of every module with a NaN or inf in any tensor."""
    bad = []
    for component, modules in weights.items():
        for path, params in modules.items():
            if any(t.is_floating_point() and not bool(torch.isfinite(t).all()) for t in params.values()):
                bad.append(f"{component}.{path}")
    return bad


def find_non_finite_keys(tensors: dict[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors holding a NaN or inf, in file order."""
    return [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]


def find_rank_mismatches(weights: AdapterWeights) -> list[str]:
    """`component.module: ...` for every module whose low-rank factors disagree on the rank, or that has
    one half of a LoRA pair only."""
    problems = []
    for component, modules in weights.items():
        for path, params in modules.items():
            where = path if component == "all" else f"{component}.{path}"
            for up, up_axis, down, down_axis in _RANK_PAIRS:
                if (up not in params and down not in params) or _TUCKER_CORE.get(up) in params:
                    continue
                if up not in params or down not in params:
                    have, lack = (up, down) if up in params else (down, up)
                    problems.append(f"{where}: has {_NAMES.get(have, have)} but no {_NAMES.get(lack, lack)}")
                    continue
                a, b = params[up], params[down]
                if a.ndim <= up_axis or b.ndim <= down_axis or a.shape[up_axis] != b.shape[down_axis]:
                    problems.append(f"{where}: {_NAMES.get(down, down)} {list(b.shape)} and {_NAMES.get(up, up)} "
                                    f"{list(a.shape)} disagree on the rank")
    return problems
