"""Optimiser and learning-rate schedule: parameter groups (UNet / text encoder, LoRA+), by name."""

from __future__ import annotations

import importlib.util

import torch

from sd_lora.errors import SdLoraError

__all__ = ["param_groups", "build_optimizer", "adamw_kernel", "build_lr_scheduler", "set_optimizer_mode", "block_lr_weight"]

_PACKAGES = {"lion": ("lion_pytorch", "lion-pytorch", "lion"), "came": ("came_pytorch", "came-pytorch", "came"),
             "adamw_schedulefree": ("schedulefree", "schedulefree", "schedulefree")}


def optimizer_package(name: str) -> tuple[str, str, str] | None:
    """(module, pip package, sd-lora extra) the optimiser `name` needs, or None for torch's own."""
    extra = {"adamw8bit": ("bitsandbytes", "bitsandbytes", "bnb"), "prodigy": ("prodigyopt", "prodigyopt", "prodigy")}
    return {**extra, **_PACKAGES}.get(name)


def param_groups(models: dict[str, torch.nn.Module], train_cfg, block_weight=None) -> list[dict]:
    """One group per component (and per A/B side with LoRA+), each with its own learning rate; with
    `block_weight(name) -> float` (network.block_lr_weights), UNet groups split by that lr multiplier."""
    groups = []
    for component, model in models.items():
        lr = (train_cfg.unet_lr if component == "unet" else train_cfg.text_encoder_lr) or train_cfg.learning_rate
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        by_weight: dict[float, list] = {}
        for n, p in named:
            by_weight.setdefault(block_weight(n) if block_weight and component == "unet" else 1.0, []).append((n, p))
        for weight, members in by_weight.items():
            name = component if weight == 1.0 else f"{component}_x{weight:g}"
            if train_cfg.loraplus_lr_ratio:
                # LoRA+: the B (up) side learns ratio times faster than A; other adapter tensors keep lr.
                groups.append({"params": [p for n, p in members if "lora_B" not in n], "lr": lr * weight, "name": name})
                groups.append({"params": [p for n, p in members if "lora_B" in n],
                               "lr": lr * weight * train_cfg.loraplus_lr_ratio, "name": f"{name}_lora_B"})
            else:
                groups.append({"params": [p for _, p in members], "lr": lr * weight, "name": name})
    return [g for g in groups if g["params"]]


def build_optimizer(groups: list[dict], train_cfg, device: torch.device) -> torch.optim.Optimizer:
    name, wd = train_cfg.optimizer, train_cfg.weight_decay
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=train_cfg.learning_rate, weight_decay=wd,
                                 **adamw_kernel(getattr(train_cfg, "adamw_impl", "auto"), device))
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
    if name in _PACKAGES:
        module, package, extra = _PACKAGES[name]
        if importlib.util.find_spec(module) is None:
            raise SdLoraError(f"train.optimizer = {name!r} needs {package}: pip install 'sd-lora[{extra}]' "
                              "(or use optimizer = 'adamw')")
        if name == "lion":
            from lion_pytorch import Lion

            return Lion(groups, lr=train_cfg.learning_rate, weight_decay=wd)
        if name == "came":
            from came_pytorch import CAME

            return CAME(groups, lr=train_cfg.learning_rate, weight_decay=wd, betas=(0.9, 0.999, 0.9999),
                        eps=(1e-30, 1e-16))
        from schedulefree import AdamWScheduleFree

        return AdamWScheduleFree(groups, lr=train_cfg.learning_rate, weight_decay=wd,
                                 warmup_steps=train_cfg.lr_warmup_steps)
    raise SdLoraError(f"train.optimizer: unknown optimizer {name!r}")


def adamw_kernel(impl: str, device: torch.device) -> dict:
    """torch AdamW's kernel flags for train.adamw_impl: 'auto' is fused wherever torch has a fused kernel for
    the device (CPU and CUDA: one pass over all adapter tensors, ~4x faster than the per-tensor loop on a CPU)."""
    if impl == "auto":
        impl = "fused" if device.type in ("cpu", "cuda") else "for_loop"
    return {"fused": {"fused": True}, "foreach": {"foreach": True}, "for_loop": {"foreach": False}}[impl]


def set_optimizer_mode(optimizer, training: bool) -> None:
    """Schedule-free optimisers hold two points: train() for steps, eval() for samples, validation and saving
    (the weights an exported file should have). Other optimisers have no modes."""
    inner = getattr(optimizer, "optimizer", optimizer)  # accelerate's wrapper
    switch = getattr(inner, "train" if training else "eval", None)
    if callable(switch) and hasattr(inner, "param_groups") and any("train_mode" in g for g in inner.param_groups):
        switch()


def build_lr_scheduler(optimizer: torch.optim.Optimizer, train_cfg, total_steps: int):
    from diffusers.optimization import get_scheduler

    name = train_cfg.lr_scheduler
    if train_cfg.optimizer == "adamw_schedulefree":
        name = "constant"  # schedule-free warms up itself and needs no decay
    elif name == "constant" and train_cfg.lr_warmup_steps:
        name = "constant_with_warmup"
    return get_scheduler(name, optimizer, num_warmup_steps=train_cfg.lr_warmup_steps,
                         num_training_steps=total_steps, num_cycles=train_cfg.lr_scheduler_num_cycles,
                         power=train_cfg.lr_scheduler_power)


def block_lr_weight(network, block_index):
    """`name -> lr multiplier` from network.block_lr_weights (indexed by the family's `block_index`: kohya's 25
    UNet blocks, SD3's joint blocks), or None when unset."""
    from sd_lora.adapters.blocks import block_value

    if not network.block_lr_weights:
        return None
    return lambda name: float(block_value(network.block_lr_weights, name, block_index, 1.0))
