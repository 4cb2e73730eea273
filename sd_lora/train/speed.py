"""Speed options applied once the models, adapters and optimiser exist: train.compile, train.channels_last and
the CPU allocator setting (train.cpu_allocator_tuning). Each is a config key; none changes the maths."""

from __future__ import annotations

import torch

from sd_lora.train.memory import tune_cpu_allocator

__all__ = ["apply_speed_options"]


def apply_speed_options(t, device, denoiser: torch.nn.Module, forward) -> tuple[object, dict[str, bool]]:
    """Apply train config `t`'s speed options to the denoiser and its (prepared) forward wrapper; returns the
    forward to call and what was applied."""
    applied = {"channels_last": False, "compile": False, "cpu_allocator": False}
    if t.channels_last:
        denoiser.to(memory_format=torch.channels_last)  # 4-D conv weights; the adapters' linears are unaffected
        applied["channels_last"] = True
    if t.compile:
        # The prepared wrapper is compiled (DDP's hooks stay outside); the first steps pay the compile time.
        forward = torch.compile(forward)
        applied["compile"] = True
    if device.type == "cpu":
        applied["cpu_allocator"] = tune_cpu_allocator(t.cpu_allocator_tuning)
    return forward, applied
