"""LoRA (and LoCon, DoRA, rsLoRA) as a peft LoraConfig."""

from __future__ import annotations

from peft import LoraConfig

from sd_lora.adapters.spec import AdapterSpec

__all__ = ["build_config"]


def build_config(spec: AdapterSpec) -> LoraConfig:
    # peft's default init: A kaiming-uniform, B zero -> the adapted model equals the base at step 0.
    return LoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                      target_modules=spec.targets.names, rank_pattern=spec.rank_pattern(),
                      alpha_pattern=spec.alpha_pattern(), use_dora=spec.dora, use_rslora=spec.rslora,
                      init_lora_weights=True)
