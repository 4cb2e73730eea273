"""Exact LoRA fusing and splitting for modules that are one Linear in a checkpoint and several in diffusers.

`fuse`: separately trained LoRAs on the row blocks of one weight (diffusers' to_q / to_k / to_v, FLUX's
linear1 = q, k, v, proj_mlp) become one LoRA of rank R = sum of ranks: down = the downs stacked, up = block
diagonal, alpha = s * R with s the common scale alpha_i / r_i, so up @ down * alpha / R restricted to block i is
exactly up_i @ down_i * alpha_i / r_i. Blocks without a LoRA get zero rows; a block whose scale differs from the
first one has the ratio folded into its up.

`split`: any fused LoRA (also one trained fused, with a dense up) -> one LoRA per block with the same ΔW slice:
down = the fused down, up = the block's rows, same alpha (same alpha / R). When up is block diagonal (as `fuse`
writes it) each block keeps only its own columns, which gives back the original factors and rank.
DoRA's magnitude is per output row, so it splits and fuses with the rows. LoHa / LoKr products do not split
into row blocks, so they are never fused (the callers write them per diffusers module).
"""

from __future__ import annotations

import torch

from sd_lora.errors import SdLoraError

__all__ = ["fuse", "split", "swap_halves", "LORA_ONLY"]

LORA_ONLY = frozenset({"lora_A", "lora_B", "alpha", "dora_scale"})


def swap_halves(up: torch.Tensor) -> torch.Tensor:
    """Exchange the two output halves (shift/scale order differs between the layouts); its own inverse."""
    half = up.shape[0] // 2
    return torch.cat([up[half:], up[:half]])


def _scale(params: dict[str, torch.Tensor]) -> float:
    rank = params["lora_A"].shape[0]
    return float(params["alpha"].item()) / rank if "alpha" in params else 1.0


def fuse(parts: list[dict[str, torch.Tensor] | None], sizes: tuple[int, ...]) -> dict[str, torch.Tensor]:
    """One LoRA for the fused weight from per-block LoRAs (None: block not trained); see the module doc."""
    present = [p for p in parts if p is not None]
    if not present:
        raise ValueError("nothing to fuse")
    if any("dora_scale" in p for p in present) and len(present) != len(parts):
        raise SdLoraError("DoRA on only some of a fused module's blocks cannot be written as one module")
    first = present[0]
    scale = _scale(first)
    rank = sum(p["lora_A"].shape[0] for p in present)
    down = torch.cat([p["lora_A"] for p in present])
    up = torch.zeros((sum(sizes), rank, *first["lora_B"].shape[2:]), dtype=first["lora_B"].dtype)
    row = col = 0
    for params, size in zip(parts, sizes):
        if params is not None:
            r = params["lora_A"].shape[0]
            ratio = _scale(params) / scale
            block = params["lora_B"] if ratio == 1.0 else (params["lora_B"].float() * ratio).to(up.dtype)
            up[row:row + size, col:col + r] = block
            col += r
        row += size
    out = {"lora_A": down, "lora_B": up, "alpha": torch.tensor(scale * rank, dtype=first["alpha"].dtype
                                                               if "alpha" in first else torch.float32)}
    if "dora_scale" in first:
        out["dora_scale"] = torch.cat([p["dora_scale"] for p in present])
    return out


def split(params: dict[str, torch.Tensor], sizes: tuple[int, ...]) -> list[dict[str, torch.Tensor] | None]:
    """Per-block LoRAs whose ΔW equal the fused LoRA's row blocks; None for a block it leaves unchanged."""
    down, up = params["lora_A"], params["lora_B"]
    rank = down.shape[0]
    if up.shape[0] != sum(sizes):
        raise SdLoraError(f"up has {up.shape[0]} rows, the fused module {sum(sizes)} ({' + '.join(map(str, sizes))})")
    alpha = params["alpha"] if "alpha" in params else torch.tensor(float(rank), dtype=down.dtype)
    bounds = [sum(sizes[:i]) for i in range(len(sizes) + 1)]
    used = [(up[a:b].flatten(1) != 0).any(0) for a, b in zip(bounds, bounds[1:])] if not up.is_meta else []
    # shapes-only (meta) tensors cannot show which blocks are used: every block then gets the whole down
    diagonal = "dora_scale" not in params and not up.is_meta and int(torch.stack(used).sum(0).max()) <= 1
    out: list[dict[str, torch.Tensor] | None] = []
    for i, (a, b) in enumerate(zip(bounds, bounds[1:])):
        if diagonal:
            cols = used[i].nonzero().flatten()
            if cols.numel() == 0:
                out.append(None)
                continue
            r = cols.numel()
            part = {"lora_A": down[cols].contiguous(), "lora_B": up[a:b][:, cols].contiguous(),
                    "alpha": (alpha.float() * r / rank).to(alpha.dtype)}
        else:
            part = {"lora_A": down, "lora_B": up[a:b].contiguous(), "alpha": alpha}
        if "dora_scale" in params:
            part["dora_scale"] = params["dora_scale"][a:b].contiguous()
        out.append(part)
    return out
