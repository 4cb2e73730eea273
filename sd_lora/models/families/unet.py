"""What SD1, SD2 and SDXL share: a UNet predicting noise (or v) on a DDPM schedule, CLIP conditioning."""

from __future__ import annotations

import torch

from sd_lora.models.encode import PromptEmbeds, encode_clip
from sd_lora.models.families.base import Family
from sd_lora.models.families import unet_files
from sd_lora.models.families.unet_blocks import NUM_BLOCKS, BLOCK_NAMES, block_index

__all__ = ["UNetFamily", "UNET_PRESETS"]

_ATTN = ["to_q", "to_k", "to_v", "to_out.0"]
_TRANSFORMER = _ATTN + ["proj_in", "proj_out", "ff.net.0.proj", "ff.net.2"]
_RESNET = ["conv1", "conv2", "time_emb_proj", "conv_shortcut", "downsamplers.0.conv", "upsamplers.0.conv"]
UNET_PRESETS = {"attn": _ATTN, "attn-mlp": _TRANSFORMER, "full": _TRANSFORMER + _RESNET}


class UNetFamily(Family):
    denoiser = "unet"
    objective = "ddpm"
    penultimate = False  # which CLIP layer conditions the UNet at clip skip 1

    def encode_prompts(self, encoders, tokenizers, captions, clip_skip=None, windows=1, **options) -> PromptEmbeds:
        hidden, _ = encode_clip(encoders, tokenizers, captions, clip_skip, windows, self.penultimate)
        return PromptEmbeds(hidden[0])

    def added_conditions(self, embeds: PromptEmbeds, batch: dict, device) -> dict | None:
        return None

    def predict(self, denoiser, noisy, timesteps, embeds, batch) -> torch.Tensor:
        added = self.added_conditions(embeds, batch, noisy.device)
        return denoiser(noisy, timesteps, embeds.hidden_states.to(noisy.dtype), added_cond_kwargs=added).sample

    def pipeline_embeds(self, pos, neg, dtype) -> dict:
        return {"prompt_embeds": pos.hidden_states.to(dtype),
                "negative_prompt_embeds": None if neg is None else neg.hidden_states.to(dtype)}

    def uses_cfg(self, pipe, guidance: float) -> bool:
        return guidance > 1 and pipe.unet.config.get("time_cond_proj_dim") is None  # LCM-style UNets embed it

    def target_presets(self) -> dict[str, list[str]]:
        return UNET_PRESETS

    def save_tiny(self, out_dir, seed: int = 0, words=()):
        from sd_lora.models.tiny import save_tiny_pipeline

        return save_tiny_pipeline(out_dir, family=self.name, seed=seed, words=words)

    # community files: ss_base_model_version (+ `v_suffix` for v-prediction), modelspec architecture (`_v`: of a
    # v-prediction model, when it differs) and implementation, as kohya writes them
    base_model_version = ""
    v_suffix = "_v"
    modelspec_architecture_v: str | None = None
    implementation = "diffusers"
    ss_v2 = False

    def default_resolution(self, v_prediction: bool = False) -> int:
        return 512

    def pointwise_conv(self, component: str, path: str) -> bool:
        return component == self.denoiser and path.endswith("conv_shortcut")

    def file_metadata(self, v_prediction: bool = False, variant: str | None = None) -> dict[str, str]:
        return {"ss_base_model_version": self.base_model_version + (self.v_suffix if v_prediction else ""),
                "ss_v2": str(self.ss_v2),
                "modelspec.architecture": (v_prediction and self.modelspec_architecture_v) or self.modelspec_architecture,
                "modelspec.implementation": self.implementation,
                "modelspec.prediction_type": "v" if v_prediction else "epsilon"}

    def file_recognisers(self) -> list[tuple[int, object]]:
        return [(70, unet_files.by_shapes), (90, unet_files.sd1_or_sd2)]

    def build_tiny(self, seed: int = 0, words=(), tmp_dir=None):
        from sd_lora.models.families.unet_tiny import build_tiny_unet_pipeline

        return build_tiny_unet_pipeline(self.name, seed=seed, words=words, tmp_dir=tmp_dir)

    def block_index(self, module_name, denoiser_config) -> int | None:
        per = denoiser_config["layers_per_block"] if isinstance(denoiser_config, dict) else denoiser_config.layers_per_block
        return block_index(module_name, per if isinstance(per, int) else per[0])

    def num_blocks(self, denoiser_config) -> int:
        return NUM_BLOCKS

    def block_names(self, denoiser_config) -> list[str]:
        return list(BLOCK_NAMES)

    def blocks(self, denoiser) -> list[torch.nn.Module]:
        return [*denoiser.down_blocks, denoiser.mid_block, *denoiser.up_blocks]
