"""Typed training config: one dataclass per TOML section, every field with a default and help.

Cross-field rules live in each section's `validate()`, which returns every problem at once as
"section.key: what is wrong" so the loader can report them together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sd_lora.config.data import DataConfig

__all__ = ["ModelConfig", "NetworkConfig", "TrainConfig", "OutputConfig", "Config"]


def _f(default, help: str, **extra):
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **extra})
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class ModelConfig:
    pretrained: str = _f("builtin:tiny", "Base model: 'builtin:tiny', a local diffusers directory, or a hub id.", path=True)
    family: Literal["sd1", "sd2", "sdxl"] | None = _f(None, "Override the family detected from the model's config.")
    prediction_type: Literal["epsilon", "v_prediction"] | None = _f(
        None, "Override the prediction type read from the scheduler config.")
    revision: str | None = _f(None, "Hub revision (branch, tag or commit) of a hub id.")

    def validate(self) -> list[str]:
        return [] if self.pretrained.strip() else ["model.pretrained: must not be empty"]


@dataclass
class NetworkConfig:
    type: Literal["lora", "loha", "lokr"] = _f(
        "lora", "Adapter method (all through peft): lora (LoCon when conv layers are targeted), loha, lokr.")
    rank: int = _f(16, "Rank r (the width of the low-rank update).")
    alpha: float = _f(16.0, "Alpha; the update is scaled by alpha / rank (alpha / sqrt(rank) with rslora).")
    conv_rank: int | None = _f(None, "Rank of 3x3 conv layers (LoCon, targeted by preset 'full'); default: rank.")
    conv_alpha: float | None = _f(None, "Alpha of 3x3 conv layers; default: alpha.")
    dora: bool = _f(False, "DoRA: learn a per-output magnitude besides the LoRA direction (type lora only).")
    rslora: bool = _f(False, "Rank-stabilised scaling alpha / sqrt(rank) (type lora only).")
    lokr_factor: int = _f(-1, "LoKr: factor of the Kronecker split (-1: as square as possible).")
    dropout: float = _f(0.0, "Dropout on the adapter path during training.")
    preset: Literal["attn", "attn-mlp", "full"] = _f(
        "attn", "Modules adapted: attn (to_q/k/v/out.0), attn-mlp (+ proj_in/out and feed-forward; text encoder "
        "+ fc1/fc2), full (+ ResNet convs, time embedding projections, up/down-samplers).")
    unet_targets: list[str] | None = _f(
        None, "UNet module-name suffixes to adapt instead of the preset, e.g. ['attn2.to_q', 'attn2.to_k', "
        "'attn2.to_v', 'attn2.to_out.0'] for cross-attention only.")
    unet_target_regex: str | None = _f(
        None, "A regular expression matched against full UNet module names (instead of preset/unet_targets).")
    train_text_encoder: bool = _f(False, "Also train adapters on the text encoder(s).")
    text_encoder_targets: list[str] | None = _f(
        None, "Text-encoder module-name suffixes instead of the preset (attn: q/k/v/out_proj).")

    def validate(self) -> list[str]:
        problems = []
        for name in ("rank", "conv_rank"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"network.{name}: must be at least 1, got {value}")
        for name in ("alpha", "conv_alpha"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                problems.append(f"network.{name}: must be positive, got {value}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"network.dropout: must be in [0, 1), got {self.dropout}")
        if self.unet_targets is not None and not self.unet_targets:
            problems.append("network.unet_targets: must name at least one module (or leave it out to use the preset)")
        if self.unet_targets and self.unet_target_regex:
            problems.append("network.unet_target_regex: set either unet_targets or unet_target_regex, not both")
        if self.unet_target_regex:
            import re

            try:
                re.compile(self.unet_target_regex)
            except re.error as e:
                problems.append(f"network.unet_target_regex: not a valid regular expression: {e}")
        if self.text_encoder_targets is not None and not self.text_encoder_targets:
            problems.append("network.text_encoder_targets: must name at least one module")
        for flag in ("dora", "rslora"):
            if getattr(self, flag) and self.type != "lora":
                problems.append(f"network.{flag}: only applies to type 'lora', not {self.type!r}")
        return problems


@dataclass
class TrainConfig:
    max_steps: int = _f(1000, "Optimiser steps to train for.")
    batch_size: int = _f(1, "Images per step per process (before gradient accumulation).")
    gradient_accumulation_steps: int = _f(1, "Micro-batches accumulated into one optimiser step.")
    learning_rate: float = _f(1e-4, "AdamW learning rate.")
    lr_warmup_steps: int = _f(0, "Linear warmup steps from 0 to learning_rate; constant afterwards.")
    weight_decay: float = _f(1e-2, "AdamW weight decay.")
    max_grad_norm: float = _f(1.0, "Clip the gradient norm to this value (0 disables clipping).")
    mixed_precision: Literal["no", "fp16", "bf16"] = _f(
        "no", "Mixed precision: the frozen base runs in this dtype, LoRA weights stay fp32.")
    gradient_checkpointing: bool = _f(False, "Recompute activations in backward to save memory.")
    attention: Literal["sdpa", "xformers"] = _f("sdpa", "Attention kernel: PyTorch SDPA or xformers (needs the extra).")
    seed: int = _f(42, "Seed for adapter init, data order, noise and timesteps.")
    log_every_n_steps: int = _f(10, "Print/log loss and speed every N optimiser steps.")

    def validate(self) -> list[str]:
        problems = []
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "log_every_n_steps"):
            if getattr(self, name) < 1:
                problems.append(f"train.{name}: must be at least 1, got {getattr(self, name)}")
        if self.learning_rate <= 0:
            problems.append(f"train.learning_rate: must be positive, got {self.learning_rate}")
        for name in ("lr_warmup_steps", "weight_decay", "max_grad_norm"):
            if getattr(self, name) < 0:
                problems.append(f"train.{name}: must not be negative, got {getattr(self, name)}")
        return problems


@dataclass
class OutputConfig:
    dir: str = _f("output", "Folder for the adapter, resolved config and logs.", path=True)
    name: str = _f("lora", "File stem: the adapter is written to {dir}/{name}.safetensors.")
    save_precision: Literal["fp16", "fp32", "bf16"] = _f("fp16", "Precision of the tensors in the saved file.")
    format: Literal["community", "diffusers"] = _f(
        "community", "community: kohya/AUTOMATIC1111/ComfyUI layout (diffusers loads it too); diffusers: save_lora_weights layout.")

    def validate(self) -> list[str]:
        bad = set('/\\:*?"<>|')
        if not self.name or any(c in bad for c in self.name):
            return [f"output.name: must be a plain file stem without path separators, got {self.name!r}"]
        return []


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
