"""LyCORIS LoHa (Hadamard product of two low-rank products) as a peft LoHaConfig."""

from __future__ import annotations

from peft import LoHaConfig

from sd_lora.adapters.spec import AdapterSpec

__all__ = ["build_config"]


def build_config(spec: AdapterSpec) -> LoHaConfig:
    # init_weights=True zero-initialises one factor, so the model equals the base at step 0.
    return LoHaConfig(r=spec.rank, alpha=spec.alpha, module_dropout=spec.dropout,
                      target_modules=spec.targets.names, rank_pattern=spec.rank_pattern(),
                      alpha_pattern=spec.alpha_pattern(), init_weights=True)
