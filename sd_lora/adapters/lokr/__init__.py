"""LyCORIS LoKr (Kronecker product with a low-rank factor) as a peft LoKrConfig."""

from __future__ import annotations

from peft import LoKrConfig

from sd_lora.adapters.spec import AdapterSpec

__all__ = ["build_config"]


def build_config(spec: AdapterSpec) -> LoKrConfig:
    return LoKrConfig(r=spec.rank, alpha=spec.alpha, module_dropout=spec.dropout,
                      target_modules=spec.targets.names, rank_pattern=spec.rank_pattern(),
                      alpha_pattern=spec.alpha_pattern(), decompose_factor=spec.lokr_factor, init_weights=True)
