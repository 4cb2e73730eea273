"""Optimiser and learning-rate schedule: parameter groups (UNet / text encoder, LoRA+), by name."""

from __future__ import annotations

import importlib.util

import torch

from sd_lora.errors import SdLoraError

__all__ = ["param_groups", "build_optimizer", "build_lr_scheduler"]


def param_groups(models: dict[str, torch.nn.Module], train_cfg) -> list[dict]:
    """One group per component (and per A/B side with LoRA+), each with its own learning rate."""
    groups = []
    for component, model in models.items():
        lr = (train_cfg.unet_lr if component == "unet" else train_cfg.text_encoder_lr) or train_cfg.learning_rate
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        if train_cfg.loraplus_lr_ratio:
            # LoRA+: the B (up) side learns ratio times faster than A; other adapter tensors keep lr.
            fast = [p for n, p in named if "lora_B" in n]
            slow = [p for n, p in named if "lora_B" not in n]
            groups.append({"params": slow, "lr": lr, "name": f"{component}"})
            groups.append({"params": fast, "lr": lr * train_cfg.loraplus_lr_ratio, "name": f"{component}_lora_B"})
        else:
            groups.append({"params": [p for _, p in named], "lr": lr, "name": component})
    return [g for g in groups if g["params"]]


def build_optimizer(groups: list[dict], train_cfg, device: torch.device) -> torch.optim.Optimizer:
    name, wd = train_cfg.optimizer, train_cfg.weight_decay
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=train_cfg.learning_rate, weight_decay=wd)
    if name == "adamw8bit":
        if importlib.util.find_spec("bitsandbytes") is None:
            raise SdLoraError("train.optimizer = 'adamw8bit' needs bitsandbytes: pip install 'sd-lora[bnb]' "
                              "(or use optimizer = 'adamw')")
        if device.type != "cuda":
            raise SdLoraError("train.optimizer = 'adamw8bit' runs on CUDA only; this run is on "
                              f"{device.type}: use optimizer = 'adamw'")
        import bitsandbytes as bnb

        return bnb.optim.AdamW8bit(groups, lr=train_cfg.learning_rate, weight_decay=wd)
    if name == "prodigy":
        if importlib.util.find_spec("prodigyopt") is None:
            raise SdLoraError("train.optimizer = 'prodigy' needs prodigyopt: pip install prodigyopt")
        from prodigyopt import Prodigy

        return Prodigy(groups, lr=train_cfg.learning_rate, weight_decay=wd)
    if name == "adafactor":
        from transformers.optimization import Adafactor

        # Fixed learning rate (not Adafactor's relative step) so schedules and LoRA+ behave like AdamW.
        return Adafactor(groups, lr=train_cfg.learning_rate, weight_decay=wd, scale_parameter=False,
                         relative_step=False, warmup_init=False)
    raise SdLoraError(f"train.optimizer: unknown optimizer {name!r}")


def build_lr_scheduler(optimizer: torch.optim.Optimizer, train_cfg, total_steps: int):
    from diffusers.optimization import get_scheduler

    name = train_cfg.lr_scheduler
    if name == "constant" and train_cfg.lr_warmup_steps:
        name = "constant_with_warmup"
    return get_scheduler(name, optimizer, num_warmup_steps=train_cfg.lr_warmup_steps,
                         num_training_steps=total_steps, num_cycles=train_cfg.lr_scheduler_num_cycles,
                         power=train_cfg.lr_scheduler_power)
