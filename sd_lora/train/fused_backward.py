"""`train.fused_backward`: the optimiser step of each parameter runs as soon as backward has produced its
gradient, and the gradient is dropped right after, so the gradients of all trained parameters never exist at
once (kohya's --fused_backward_pass, OneTrainer's fused back pass).

Mechanism: a `register_post_accumulate_grad_hook` per trained parameter calls the run's own optimiser. torch's
optimisers (and bitsandbytes', transformers' Adafactor, lion-pytorch) skip parameters whose `.grad` is None;
inside the hook only this parameter has a gradient (the others are not computed yet or were already applied
and dropped), so `step()` updates exactly it, with its own state and its group's learning rate. One optimiser
keeps the scheduler, the resumable state and the parameter groups unchanged; the recipe's own `step()` after
backward then finds no gradient and does nothing.

It saves the memory of one gradient per trained parameter (4 bytes each in fp32): for a LoRA that is small
(an SD1 rank-16 attention adapter: 12 MiB), for large ranks, LoKr/full-rank methods or trained text encoders
more. The config refuses what it cannot do (accumulation, clipping over all gradients, optimisers that need
every gradient); `install` refuses the run-time cases (several processes, fp16 loss scaling, AdaLoRA's rank
allocator, which reads the gradients after the step).
"""

from __future__ import annotations

import torch

from sd_lora.errors import SdLoraError

__all__ = ["install", "gradient_bytes"]


def gradient_bytes(params) -> int:
    """What the gradients of `params` would hold at once without fused backward (what it saves)."""
    return sum(p.numel() * p.element_size() for p in params if p.requires_grad)


def install(optimizer, num_processes: int = 1, mixed_precision: str = "no",
            network_type: str = "lora") -> list:
    """Hook `optimizer`'s parameters so each is stepped during backward; returns the hook handles."""
    why = "train.fused_backward steps each parameter during backward"
    if num_processes > 1:
        raise SdLoraError(f"{why}; with {num_processes} processes the gradients are averaged across processes first "
                          "(DDP), which fused steps would skip. Set train.fused_backward = false for multi-process runs")
    if mixed_precision == "fp16":
        raise SdLoraError(f"{why}; fp16's loss scaler must see every gradient before any step (to skip steps that "
                          "overflowed). Use train.mixed_precision = 'bf16' or 'no', or fused_backward = false")
    if network_type == "adalora":
        raise SdLoraError(f"{why}; AdaLoRA's rank allocator reads all gradients after the step. Set "
                          "train.fused_backward = false for network.type = 'adalora'")
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper: step the optimiser itself

    def step_one(param: torch.Tensor) -> None:
        inner.step()
        param.grad = None

    return [p.register_post_accumulate_grad_hook(step_one)
            for group in inner.param_groups for p in group["params"] if p.requires_grad]
