"""LoRA through peft: build the config, inject it into a frozen model, mark only adapters trainable."""

from __future__ import annotations

import torch
from peft import LoraConfig

__all__ = ["lora_config", "inject_lora", "trainable_parameters"]


def lora_config(targets: list[str], rank: int, alpha: float, dropout: float = 0.0) -> LoraConfig:
    # peft's default init: A kaiming-uniform, B zero -> the adapted model equals the base at step 0.
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=list(targets),
                      init_lora_weights=True)


def inject_lora(model: torch.nn.Module, config: LoraConfig, adapter_name: str = "default") -> int:
    """Freeze `model`, add the adapter in place, keep its weights in fp32; return the number of adapted modules.

    Uses the model's own `add_adapter` (diffusers/transformers PEFT integration) so that
    `set_adapters`, `fuse_lora` and the save/load helpers of those libraries see it.
    """
    model.requires_grad_(False)
    try:
        model.add_adapter(config, adapter_name=adapter_name)
    except ValueError as e:
        if "not found in the base model" in str(e) or "Target modules" in str(e):
            from sd_lora.errors import SdLoraError

            raise SdLoraError(f"network targets {sorted(config.target_modules)} match no module of the "
                              f"{type(model).__name__}: {e}") from e
        raise
    count = 0
    for module in model.modules():
        if hasattr(module, "lora_A") and adapter_name in module.lora_A:
            count += 1
            for p in (*module.lora_A[adapter_name].parameters(), *module.lora_B[adapter_name].parameters()):
                p.data = p.data.float()
                p.requires_grad_(True)
    return count


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
