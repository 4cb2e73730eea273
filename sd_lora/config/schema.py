"""Typed training config: one dataclass per TOML section, every field with a default and help.

Cross-field rules live in each section's `validate()`, which returns every problem at once as
"section.key: what is wrong" so the loader can report them together.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from sd_lora.config.data import DataConfig
from sd_lora.config.fields import finite_first
from sd_lora.config.fields import option as _f
from sd_lora.config.train import SampleConfig, TrainConfig

__all__ = ["ModelConfig", "NetworkConfig", "TrainConfig", "SampleConfig", "OutputConfig", "Config"]


@dataclass
class ModelConfig:
    pretrained: str = _f("builtin:tiny", "Base model: 'builtin:tiny', a local diffusers directory, a single-file checkpoint (.safetensors/.ckpt), or a hub id (org/name; cached copies load offline).", path="model")
    family: Literal["sd1", "sd2", "sdxl", "sd3", "flux"] | None = _f(
        None, "The model family, for a single-file checkpoint whose keys are ambiguous; a diffusers folder says its own "
        "family (a contradicting value is an error).")
    prediction_type: Literal["epsilon", "v_prediction"] | None = _f(
        None, "Override the prediction type read from the scheduler config.")
    revision: str | None = _f(None, "Hub revision (branch, tag or commit) of a hub id.")
    allow_pickle: bool = _f(False, "Allow pickle checkpoints (.ckpt/.pt/.bin). Pickle can run code: only for files you trust.", resume="free")
    quantize: Literal["nf4", "int8"] | None = _f(
        None, "Load the frozen UNet quantised through bitsandbytes (QLoRA-style; CUDA only).")
    t5: bool = _f(True, "SD3: load the T5-XXL text encoder (false: its conditioning is zeros, as diffusers allows; "
                  "saves about 9 GB).")
    weight_dtype: Literal["auto", "fp8_e4m3fn", "fp8_e5m2", "bf16", "fp16", "fp32"] = _f(
        "auto", "Storage dtype of the frozen Linear/Conv weights, cast per layer to the compute dtype at use; "
        "fp8_e4m3fn/fp8_e5m2 take 1 byte a weight (half of bf16; e4m3fn is the more precise, e5m2 the wider "
        "range). Adapters stay fp32. auto: the train.mixed_precision dtype.")

    def validate(self) -> list[str]:
        problems = [] if self.pretrained.strip() else ["model.pretrained: must not be empty"]
        if self.quantize and self.weight_dtype != "auto":
            problems.append(f"model.weight_dtype = {self.weight_dtype!r} and model.quantize = {self.quantize!r} both "
                            "set how the frozen weights are stored: choose one (leave the other out)")
        return problems


@dataclass
class NetworkConfig:
    type: Literal["lora", "loha", "lokr", "adalora", "oft", "boft"] = _f(
        "lora", "Adapter method (all through peft): lora (LoCon when conv layers are targeted), loha, lokr, adalora "
        "(rank allocated per module under a budget; saved as a plain LoRA), oft, boft (orthogonal fine-tuning; saved "
        "as the exact weight update in LoRA form).")
    rank: int = _f(16, "Rank r (the width of the low-rank update).")
    alpha: float = _f(16.0, "Alpha; the update is scaled by alpha / rank (alpha / sqrt(rank) with rslora).")
    conv_rank: int | None = _f(None, "Rank of 3x3 conv layers (LoCon, targeted by preset 'full'); default: rank.")
    conv_alpha: float | None = _f(None, "Alpha of 3x3 conv layers; default: alpha.")
    dora: bool = _f(False, "DoRA: learn a per-output magnitude besides the LoRA direction (type lora only).")
    rslora: bool = _f(False, "Rank-stabilised scaling alpha / sqrt(rank) (type lora only).")
    lokr_factor: int = _f(-1, "LoKr: factor of the Kronecker split (-1: as square as possible).")
    init_r: int = _f(12, "AdaLoRA: starting rank of every module (peft's init_r).")
    target_r: int = _f(8, "AdaLoRA: average rank per module at the end; the budget is target_r x modules.")
    tinit: int = _f(0, "AdaLoRA: steps at the full init_r budget before ranks are pruned.")
    tfinal: int = _f(0, "AdaLoRA: last steps trained at the final ranks (no more pruning).")
    deltaT: int = _f(1, "AdaLoRA: steps between two rank allocations.")
    beta1: float = _f(0.85, "AdaLoRA: smoothing of the importance (sensitivity) moving average.")
    beta2: float = _f(0.85, "AdaLoRA: smoothing of the importance uncertainty moving average.")
    adalora_orth_reg: float = _f(0.5, "AdaLoRA: weight of the orthogonality regulariser added to the training loss.")
    oft_block_size: int = _f(32, "OFT/BOFT: size of each orthogonal block (set this or oft_blocks, the other 0).")
    oft_blocks: int = _f(0, "OFT/BOFT: number of orthogonal blocks per module (instead of oft_block_size).")
    oft_constraint: float = _f(0.0, "OFT: constrained OFT (COFT) radius eps; 0: unconstrained.")
    boft_butterfly_factor: int = _f(1, "BOFT: number of butterfly factors (1: block-diagonal, as OFT).")
    dropout: float = _f(0.0, "Dropout on the adapter path during training.")
    rank_dropout: float = _f(0.0, "Rank dropout (kohya): each step drops each rank channel of every LoRA module's "
                                  "down output with this probability, the rest scaled by 1/(1-p); training only.")
    module_dropout: float = _f(0.0, "Module dropout (kohya): each step skips each LoRA module's update with this "
                                    "probability; training only.")
    block_lr_weights: list[float] | None = _f(
        None, "Learning-rate multiplier per UNet block: 25 values in kohya's order (IN00-IN11, MID, OUT00-OUT11; "
        "SDXL uses IN00-IN08, MID, OUT00-OUT08 and ignores the rest). Text encoders keep their lr.")
    block_dims: list[int] | None = _f(
        None, "Rank per UNet block (25 values, kohya's order as block_lr_weights); 0: the block is not adapted.")
    block_alphas: list[float] | None = _f(None, "Alpha per UNet block (25 values); default: network.alpha.")
    conv_block_dims: list[int] | None = _f(
        None, "Rank of 3x3 convs per UNet block (25 values; LoCon); 0: that block's convs are not adapted.")
    conv_block_alphas: list[float] | None = _f(None, "Alpha of 3x3 convs per UNet block (25 values); default: "
                                                     "conv_alpha.")
    preset: Literal["attn", "attn-mlp", "full"] = _f(
        "attn", "Modules adapted: attn (to_q/k/v/out.0), attn-mlp (+ proj_in/out and feed-forward; text encoder "
        "+ fc1/fc2), full (+ ResNet convs, time embedding projections, up/down-samplers).")
    unet_targets: list[str] | None = _f(
        None, "UNet module-name suffixes to adapt instead of the preset, e.g. ['attn2.to_q', 'attn2.to_k', "
        "'attn2.to_v', 'attn2.to_out.0'] for cross-attention only.")
    unet_target_regex: str | None = _f(
        None, "A regular expression matched against full UNet module names (instead of preset/unet_targets).")
    init_weights: str | None = _f(
        None, "Start from this LoRA file (kohya --network_weights): a community, diffusers or LyCORIS file of the "
        "same network type, loaded strictly into the adapters before training; its hash is recorded.", path=True, resume="free")
    dim_from_weights: bool = _f(False, "Take rank, alpha and conv rank/alpha from network.init_weights (kohya "
                                       "--dim_from_weights).")
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
        for name in ("dropout", "rank_dropout", "module_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"network.{name}: must be in [0, 1), got {getattr(self, name)}")
            elif name != "dropout" and getattr(self, name) and self.type != "lora":
                problems.append(f"network.{name}: only applies to type 'lora', not {self.type!r}")
        problems += self._check_blocks() + self._check_methods()
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
        if self.dim_from_weights and not self.init_weights:
            problems.append("network.dim_from_weights: needs network.init_weights (the file to read the dims from)")
        for flag in ("dora", "rslora"):
            if getattr(self, flag) and self.type != "lora":
                problems.append(f"network.{flag}: only applies to type 'lora', not {self.type!r}")
        return finite_first(self, "network", problems)

    def _check_methods(self) -> list[str]:
        problems = []
        if self.type == "adalora":
            if self.target_r < 1 or self.init_r <= self.target_r:
                problems.append(f"network.target_r / init_r: need 1 <= target_r < init_r, got target_r "
                                f"{self.target_r}, init_r {self.init_r}")
            for name in ("tinit", "tfinal", "adalora_orth_reg"):
                if getattr(self, name) < 0:
                    problems.append(f"network.{name}: must be >= 0, got {getattr(self, name)}")
            if self.deltaT < 1:
                problems.append(f"network.deltaT: must be at least 1, got {self.deltaT}")
            for name in ("beta1", "beta2"):
                if not 0 < getattr(self, name) < 1:
                    problems.append(f"network.{name}: must be in (0, 1), got {getattr(self, name)}")
        if self.type in ("oft", "boft"):
            if min(self.oft_block_size, self.oft_blocks) < 0 or (self.oft_block_size > 0) == (self.oft_blocks > 0):
                problems.append(f"network.oft_block_size / oft_blocks: set exactly one of them (> 0) and the other "
                                f"to 0, got {self.oft_block_size} / {self.oft_blocks}")
            if self.oft_constraint < 0 or (self.oft_constraint and self.type == "boft"):
                problems.append(f"network.oft_constraint: must be >= 0 and applies to type 'oft' only, got "
                                f"{self.oft_constraint}")
            if self.type == "oft" and self.preset == "full" and not (self.unet_targets or self.unet_target_regex):
                problems.append("network.preset: 'full' adapts 3x3 convs, which type 'oft' cannot save exactly; use "
                                "'attn' or 'attn-mlp', or type 'boft'")
            if self.boft_butterfly_factor < 1:
                problems.append(f"network.boft_butterfly_factor: must be at least 1, got {self.boft_butterfly_factor}")
        return problems

    def _check_blocks(self) -> list[str]:
        import math

        problems = []
        for name in ("block_lr_weights", "block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas"):
            values = getattr(self, name)
            if values is None:
                continue
            if len(values) != 25:
                problems.append(f"network.{name}: needs 25 values (IN00-IN11, MID, OUT00-OUT11), got {len(values)}")
            elif any(not math.isfinite(v) or v < 0 for v in values):
                problems.append(f"network.{name}: every value must be a finite number >= 0, got {values}")
            elif name.endswith("alphas") and any(v <= 0 for v in values):
                problems.append(f"network.{name}: every alpha must be positive, got {values}")
        if (self.block_dims or self.conv_block_dims) and self.type != "lora":
            problems.append(f"network.block_dims / conv_block_dims: only for type 'lora', not {self.type!r}")
        if self.conv_block_dims and self.preset != "full" and not self.unet_targets and not self.unet_target_regex:
            problems.append("network.conv_block_dims: 3x3 convs are only adapted with preset = 'full'")
        return problems


@dataclass
class OutputConfig:
    dir: str = _f("output", "Folder for the adapter, resolved config, checkpoints, samples and logs.", path=True)
    name: str = _f("lora", "File stem: the adapter is written to {dir}/{name}.safetensors.")
    save_precision: Literal["fp16", "fp32", "bf16"] = _f("fp16", "Precision of the tensors in the saved file.")
    format: Literal["community", "diffusers"] = _f(
        "community", "community: kohya/AUTOMATIC1111/ComfyUI layout (diffusers loads it too); diffusers: "
        "save_lora_weights layout.")
    save_every_n_steps: int = _f(0, "Also save {name}-step{N}.safetensors and a resumable state every N steps (0: off).")
    save_every_n_epochs: int = _f(0, "Save an adapter and a resumable state at the end of every N epochs (0: off).")
    save_last_n: int = _f(0, "Keep only the newest N intermediate saves (0: keep all).")
    save_state_at_end: bool = _f(True, "Also save a resumable state when training ends, so a run can be extended "
                                       "later with a higher max_steps and train.resume = 'latest'.")
    log_with: Literal["auto", "tensorboard", "wandb", "none"] = _f(
        "auto", "Experiment tracker through accelerate (loss, lr per group, grad norm, steps/s, validation loss, "
                "sample grids), written under output.dir/logs; auto: TensorBoard when installed, else none. "
                "wandb: run `wandb login` first, or set WANDB_MODE=offline and `wandb sync` later.")

    def validate(self) -> list[str]:
        problems = []
        bad = set('/\\:*?"<>|')
        if not self.name or any(c in bad for c in self.name):
            problems.append(f"output.name: must be a plain file stem without path separators, got {self.name!r}")
        for key in ("save_every_n_steps", "save_every_n_epochs", "save_last_n"):
            if getattr(self, key) < 0:
                problems.append(f"output.{key}: must not be negative, got {getattr(self, key)}")
        return problems


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def validate(self) -> list[str]:
        """Rules across sections."""
        problems = []
        t, n = self.train, self.network
        if t.optimizer == "prodigy" and n.block_lr_weights and len(set(n.block_lr_weights)) > 1:
            problems.append("network.block_lr_weights: prodigy takes one learning rate for every parameter group; "
                            "use optimizer = 'adamw' for block-wise rates")
        return problems
