"""Speed options applied once the models, adapters and optimiser exist: train.compile, train.channels_last and
the CPU allocator setting (train.cpu_allocator_tuning). Each is a config key; none changes the maths."""

from __future__ import annotations

import torch

from sd_lora.train.memory import tune_cpu_allocator

__all__ = ["apply_speed_options"]


def apply_speed_options(train, unet: torch.nn.Module, unet_forward, device: torch.device):
    """Apply `train`'s (the [train] section's) speed options to `unet` and its forward wrapper; returns (the forward
    to call from now on, {option: applied})."""
    applied = {"channels_last": False, "compile": False, "cpu_allocator": False}
    if train.channels_last:
        unet.to(memory_format=torch.channels_last)  # 4-D conv weights; the adapters' linears are unaffected
        applied["channels_last"] = True
    if train.compile:
        # The prepared wrapper is compiled (DDP's hooks stay outside); the first steps pay the compile time.
        unet_forward = torch.compile(unet_forward)
        applied["compile"] = True
    if device.type == "cpu":
        applied["cpu_allocator"] = tune_cpu_allocator(train.cpu_allocator_tuning)
    return unet_forward, applied
