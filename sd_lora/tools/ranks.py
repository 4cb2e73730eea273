"""Effective rank of every module of an adapter: singular values of its delta above 1e-3 of the largest.

What people check before resizing: a rank-128 file whose modules have effective rank 20 loses nothing at 32.
LoRA modules are decomposed exactly through their factors; LoHa / LoKr from their full delta; DoRA from its
low-rank direction update (the magnitude part depends on the base weights).
"""

from __future__ import annotations

from sd_lora.formats.names import module_to_community
from sd_lora.tools.deltas import module_delta, module_shape, read_adapter
from sd_lora.tools.resize import input_rank
from sd_lora.tools.svd import dense_svd, factor_svd

__all__ = ["RELATIVE_THRESHOLD", "effective_ranks", "format_ranks"]

RELATIVE_THRESHOLD = 1e-3


def _singular_values(component, path, params, family):
    if "lora_A" in params:
        up = params["lora_B"].float().flatten(1)
        down = params["lora_A"].float().flatten(1)
        return factor_svd(up, down)[1]
    return dense_svd(module_delta(params, module_shape(component, path, params, family)))[1]


def effective_ranks(path, family: str | None = None, allow_pickle: bool = False,
                    threshold: float = RELATIVE_THRESHOLD) -> dict[str, dict]:
    """{community module name: {"rank": stored rank, "effective_rank": n, "top_singular_value": s0}}."""
    adapter = read_adapter(path, family, allow_pickle=allow_pickle)
    out = {}
    for component, module, params in adapter.modules():
        s = _singular_values(component, module, params, adapter.family)
        top = float(s[0]) if len(s) else 0.0
        effective = int((s > threshold * top).sum()) if top > 0 else 0
        name = module_to_community(component, module, adapter.family, adapter.unet_config)
        out[name] = {"rank": input_rank(params), "effective_rank": effective, "top_singular_value": top}
    return out


def format_ranks(ranks: dict[str, dict]) -> str:
    width = max(len(n) for n in ranks)
    lines = [f"{'module':<{width}}  rank  effective"]
    lines += [f"{n:<{width}}  {r['rank']:>4}  {r['effective_rank']:>9}" for n, r in ranks.items()]
    eff = [r["effective_rank"] for r in ranks.values()]
    lines.append(f"effective rank (singular values > {RELATIVE_THRESHOLD:g} of each module's largest): "
                 f"min {min(eff)}, mean {sum(eff) / len(eff):.1f}, max {max(eff)} over {len(eff)} modules")
    return "\n".join(lines)
