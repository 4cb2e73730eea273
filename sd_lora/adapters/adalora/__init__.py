"""AdaLoRA (SVD-shaped LoRA whose ranks are allocated per module by importance, under a budget) through peft.

peft's `inject_adapter_in_model` keeps the layers but drops the tuner that drives the allocation, so
`budget.RankBudget` puts that back: sd-lora's recipe calls it once per optimiser step and adds its
orthogonality term to the loss.
"""

from __future__ import annotations

from peft import AdaLoraConfig

from sd_lora.adapters.adalora.budget import RankBudget, format_rank_table
from sd_lora.adapters.spec import AdapterSpec

__all__ = ["OPTIONS", "RankBudget", "build_config", "format_rank_table"]

OPTIONS = ("init_r", "target_r", "tinit", "tfinal", "deltaT", "beta1", "beta2", "adalora_orth_reg")


def build_config(spec: AdapterSpec) -> AdaLoraConfig:
    o = spec.options
    # The run length is only known once the data loader exists; RankBudget sets the real total_step. This
    # placeholder only has to satisfy peft's check that a pruning phase exists.
    return AdaLoraConfig(init_r=o["init_r"], target_r=o["target_r"], tinit=o["tinit"], tfinal=o["tfinal"],
                         deltaT=o["deltaT"], beta1=o["beta1"], beta2=o["beta2"], orth_reg_weight=o["adalora_orth_reg"],
                         total_step=o["tinit"] + o["tfinal"] + 1, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                         target_modules=spec.targets.names, init_lora_weights=True)
