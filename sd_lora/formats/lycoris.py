"""LyCORIS LoHa / LoKr: the weight formulas and the peft configs that reproduce a file's layout.

peft's LoHa and LoKr layers store the same tensors, in the same orientation, as LyCORIS files
(`hada_w1_a [out, r]`, Tucker `hada_w1_a [r, out]`, `lokr_w1 [a, c]`, ...), so converting is a rename.
Two meanings differ and are handled here:
- LoKr with both Kronecker factors full: LyCORIS applies no alpha scale, peft always scales by alpha/r.
- peft decides per module whether a factor is full or decomposed from r and its own factorisation
  rule, so importing picks r, `decompose_both` and `decompose_factor` that make peft build exactly the
  file's layout (and says so when no setting can).
"""

from __future__ import annotations

import collections
import re

import torch

from sd_lora.errors import SdLoraError

__all__ = ["delta_weight", "loha_config", "lokr_config", "lokr_export_params"]


def _rebuild_cp(t: torch.Tensor, w_a: torch.Tensor, w_b: torch.Tensor) -> torch.Tensor:
    return torch.einsum("i j k l, j r, i p -> p r k l", t, w_b, w_a)


def _lokr_factor(p: dict, n: str) -> torch.Tensor:
    if f"lokr_w{n}" in p:
        return p[f"lokr_w{n}"]
    if n == "2" and "lokr_t2" in p:
        return _rebuild_cp(p["lokr_t2"], p["lokr_w2_a"], p["lokr_w2_b"]).contiguous()
    return p[f"lokr_w{n}_a"] @ p[f"lokr_w{n}_b"]


def _lokr_scale(p: dict) -> float:
    rank = p["lokr_w1_b"].shape[0] if "lokr_w1_b" in p else p["lokr_w2_b"].shape[0] if "lokr_w2_b" in p else None
    if rank is None or "alpha" not in p:
        return 1.0
    return float(p["alpha"].item()) / rank


def delta_weight(params: dict[str, torch.Tensor], shape: tuple[int, ...]) -> torch.Tensor:
    """ΔW of one LoHa / LoKr / LoRA module as the community loaders compute it (multiplier 1).

    Works on meta tensors too, which is how shapes are validated without any arithmetic.
    """
    p = params
    if "hada_w1_a" in p:
        rank = p["hada_w1_b"].shape[0]
        scale = float(p["alpha"].item()) / rank if "alpha" in p else 1.0
        if "hada_t1" in p:
            w = _rebuild_cp(p["hada_t1"], p["hada_w1_a"], p["hada_w1_b"]) * _rebuild_cp(
                p["hada_t2"], p["hada_w2_a"], p["hada_w2_b"])
        else:
            w = (p["hada_w1_a"] @ p["hada_w1_b"]) * (p["hada_w2_a"] @ p["hada_w2_b"])
        return (w * scale).reshape(shape)
    if any(k.startswith("lokr_") for k in p):
        w1, w2 = _lokr_factor(p, "1"), _lokr_factor(p, "2")
        if w2.ndim == 4:
            w1 = w1[:, :, None, None]
        return (torch.kron(w1, w2) * _lokr_scale(p)).reshape(shape)
    down, up = p["lora_A"], p["lora_B"]
    rank = down.shape[0]
    scale = float(p["alpha"].item()) / rank if "alpha" in p else 1.0
    return ((up.flatten(1) @ down.flatten(1)) * scale).reshape(shape)


def _patterns(values: dict[str, float], default: float) -> dict[str, float]:
    return {re.escape(path): v for path, v in values.items() if v != default}


def _most_common(values: dict[str, float]) -> float:
    return collections.Counter(values.values()).most_common(1)[0][0]


def _tucker(modules: dict, weight_shapes: dict, key: str) -> bool:
    # peft's use_effective_conv2d is one switch for every k>1 conv, so the file must be uniform
    spatial = {p for p, s in weight_shapes.items() if p in modules and len(s) == 4 and tuple(s[2:]) != (1, 1)}
    tucker = {p for p, m in modules.items() if key in m}
    if tucker and tucker != spatial:
        example = sorted(spatial ^ tucker)[0]
        raise SdLoraError(f"{example}: the file mixes Tucker ({key}) and flat layouts across k>1 convs; "
                          "peft builds one layout for all of them.")
    return bool(tucker)


def loha_config(modules: dict[str, dict[str, torch.Tensor]], weight_shapes: dict[str, tuple[int, ...]]):
    """peft LoHaConfig that builds exactly these modules' tensors (keys: model module paths)."""
    from peft import LoHaConfig

    tucker = _tucker(modules, weight_shapes, "hada_t1")
    ranks = {p: int(m["hada_w1_b"].shape[0]) for p, m in modules.items()}
    alphas = {p: float(m["alpha"].item()) if "alpha" in m else float(ranks[p]) for p, m in modules.items()}
    r, alpha = _most_common(ranks), _most_common(alphas)
    return LoHaConfig(r=r, alpha=alpha, rank_pattern=_patterns(ranks, r), alpha_pattern=_patterns(alphas, alpha),
                      target_modules=sorted(modules), use_effective_conv2d=tucker, init_weights=False)


def _lokr_dims(m: dict, weight_shape: tuple[int, ...]) -> tuple[int, int, int, int]:
    a, c = m["lokr_w1"].shape if "lokr_w1" in m else (m["lokr_w1_a"].shape[0], m["lokr_w1_b"].shape[1])
    return a, weight_shape[0] // a, c, weight_shape[1] // c


def _lokr_rank(m: dict, dims, decompose_both: bool, path: str) -> int:
    a, b, c, d = dims
    full1, full2 = "lokr_w1" in m, "lokr_w2" in m
    if not full2:
        r = int(m["lokr_w2_b"].shape[0])
    elif not full1:
        r = int(m["lokr_w1_b"].shape[0])
    else:
        r = max(a, b, c, d)  # large enough that peft keeps both factors full
    peft_full1 = not (decompose_both and r < max(a, c) / 2)
    peft_full2 = not (r < max(b, d) / 2)
    if (peft_full1, peft_full2) != (full1, full2):
        raise SdLoraError(f"{path}: LoKr layout (w1 {'full' if full1 else 'decomposed'}, w2 "
                          f"{'full' if full2 else 'decomposed'}, rank {r}) cannot be rebuilt by peft, which picks "
                          "full or decomposed factors from the rank.")
    return r


def lokr_config(modules: dict[str, dict[str, torch.Tensor]], weight_shapes: dict[str, tuple[int, ...]]):
    """peft LoKrConfig that builds exactly these modules' tensors; alpha so that peft's scale equals LyCORIS'."""
    from peft import LoKrConfig
    from peft.tuners.lokr.layer import factorization

    dims = {p: _lokr_dims(m, weight_shapes[p]) for p, m in modules.items()}
    factor = next((f for f in [-1] + sorted({d[0] for d in dims.values()}) if all(
        factorization(a * b, f) == (a, b) and factorization(c * d, f) == (c, d) for a, b, c, d in dims.values())),
        None)
    if factor is None:
        raise SdLoraError("LoKr file uses a Kronecker factorisation peft cannot reproduce with one decompose_factor.")
    decompose_both = any("lokr_w1_a" in m for m in modules.values())
    ranks = {p: _lokr_rank(m, dims[p], decompose_both, p) for p, m in modules.items()}
    alphas = {p: ranks[p] * _lokr_scale(m) for p, m in modules.items()}
    r, alpha = _most_common(ranks), _most_common(alphas)
    decomposed_w2 = {p: m for p, m in modules.items() if "lokr_w2" not in m}
    return LoKrConfig(r=r, alpha=alpha, rank_pattern=_patterns(ranks, r), alpha_pattern=_patterns(alphas, alpha),
                      target_modules=sorted(modules), decompose_both=decompose_both, decompose_factor=factor,
                      use_effective_conv2d=_tucker(decomposed_w2, weight_shapes, "lokr_t2"), init_weights=False)


def lokr_export_params(params: dict[str, torch.Tensor], alpha: float, rank: int) -> dict[str, torch.Tensor]:
    """peft LoKr tensors -> LyCORIS tensors + alpha, moving peft's scale into w1 when LyCORIS would ignore alpha."""
    out = dict(params)
    if "lokr_w1" in out and "lokr_w2" in out:
        out["lokr_w1"] = out["lokr_w1"] * (alpha / rank)
        alpha = float(rank)
    out["alpha"] = torch.tensor(float(alpha))
    return out
