"""kohya's rank and module dropout, as forward hooks on peft's LoRA layers (peft has neither).

A hook on each LoRA module's down projection (`lora_A`) multiplies its output, in training mode only, by
- rank dropout: a mask that zeroes each rank channel of each sample with probability p, the rest scaled by
  1/(1-p) (kohya's `rank_dropout`);
- module dropout: zero for the whole batch with probability q, once per forward (kohya's `module_dropout`
  returns the base layer's output alone; B(A(x)·0) = 0 is the same, with no gradient reaching the module).
The base layer's output is never touched. Randomness comes from torch's global generator (seeded by
train.seed, restored on resume).
"""

from __future__ import annotations

import torch

__all__ = ["install_lora_dropout"]


def _hook(rank_dropout: float, module_dropout: float):
    def hook(module, args, output):
        if not module.training:
            return output
        if module_dropout and torch.rand(()) < module_dropout:
            return output * 0
        if rank_dropout:
            rank_axis = 1 if output.ndim == 4 else output.ndim - 1  # conv: [B, r, h, w]; linear: [..., r]
            shape = [output.shape[0]] + [1] * (output.ndim - 1)
            shape[rank_axis] = output.shape[rank_axis]
            keep = (torch.rand(shape, device=output.device) > rank_dropout).to(output.dtype)
            return output * keep / (1 - rank_dropout)
        return output

    return hook


def install_lora_dropout(model: torch.nn.Module, rank_dropout: float, module_dropout: float,
                         adapter_name: str = "default") -> int:
    """Hook every LoRA down projection of `adapter_name` in `model`; returns how many (0 when both are off)."""
    if not (rank_dropout or module_dropout):
        return 0
    count = 0
    for module in model.modules():
        down = getattr(module, "lora_A", None)
        if isinstance(down, torch.nn.ModuleDict) and adapter_name in down:
            down[adapter_name].register_forward_hook(_hook(rank_dropout, module_dropout))
            count += 1
    return count
