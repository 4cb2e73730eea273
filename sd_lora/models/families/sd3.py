"""Stable Diffusion 3 / 3.5 (Medium, Large): an MMDiT (`SD3Transformer2DModel`) trained by rectified flow,
conditioned on CLIP-L + CLIP-G (penultimate layers and pooled projections) and T5-XXL.

The conditioning is built as diffusers' StableDiffusion3Pipeline builds it: both CLIP hidden states side by side,
zero-padded to T5's width and followed by T5's tokens along the sequence; pooled = both CLIP projections. Without
T5 (`model.t5 = false`) its part is zeros, as diffusers does when text_encoder_3 is None.
"""

from __future__ import annotations

import re

import torch

from sd_lora.models.encode import PromptEmbeds, encode_clip
from sd_lora.models.families.base import Family
from sd_lora.models.families.flow_settings import flow_problems
from sd_lora.models.families import sd3_keys, transformer_detect
from sd_lora.models.families.base import Family, transformer_file_metadata

__all__ = ["SD3", "SD3_PRESETS", "T5_DEFAULT_LENGTH"]

T5_DEFAULT_LENGTH = 256  # diffusers' max_sequence_length and kohya's t5xxl_max_token_length for SD3

_ATTN = ["attn.to_q", "attn.to_k", "attn.to_v", "attn.to_out.0", "attn.add_q_proj", "attn.add_k_proj",
         "attn.add_v_proj", "attn.to_add_out", "attn2.to_q", "attn2.to_k", "attn2.to_v", "attn2.to_out.0"]
_MLP = ["ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2"]
_ADALN = ["norm1.linear", "norm1_context.linear"]
SD3_PRESETS = {"attn": _ATTN, "attn-mlp": _ATTN + _MLP, "full": _ATTN + _MLP + _ADALN}
_BLOCK = re.compile(r"(?:^|\.)transformer_blocks\.(\d+)\.")


class SD3(Family):
    name = "sd3"
    title = "Stable Diffusion 3 / 3.5"
    denoiser = "transformer"
    objective = "flow"
    text_encoders = ("text_encoder", "text_encoder_2", "text_encoder_3")
    tokenizers = ("tokenizer", "tokenizer_2", "tokenizer_3")
    trainable_text_encoders = ("text_encoder", "text_encoder_2")  # T5-XXL stays frozen
    vae_scaling_factor = 1.5305
    community_prefixes = {"transformer": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_",
                          "text_encoder_3": "lora_te3_"}
    modelspec_architecture = "stable-diffusion-v3-medium/lora"
    own_settings = (("model", "t5", True), ("data", "t5_max_length", None))

    @classmethod
    def matches(cls, model_index, denoiser_config) -> bool:
        return model_index.get("_class_name", "").startswith("StableDiffusion3") or \
            denoiser_config.get("_class_name") == "SD3Transformer2DModel"

    def native_resolution(self, denoiser_config, vae_config) -> int:
        return int(denoiser_config["sample_size"]) * 2 ** (len(vae_config["block_out_channels"]) - 1)

    def load_options(self, model_cfg) -> dict:
        return {} if getattr(model_cfg, "t5", True) else {"text_encoder_3": None, "tokenizer_3": None}

    def encode_options(self, denoiser, data=None) -> dict:
        return {"t5_max_length": getattr(data, "t5_max_length", None) or T5_DEFAULT_LENGTH,
                "joint_dim": denoiser.config.joint_attention_dim}

    def encode_prompts(self, encoders, tokenizers, captions, clip_skip=None, windows=1, *,
                       t5_max_length: int = T5_DEFAULT_LENGTH, joint_dim: int | None = None, **options) -> PromptEmbeds:
        hidden, pooled = encode_clip(encoders[:2], tokenizers[:2], captions, clip_skip, windows, penultimate=True)
        clip = torch.cat(hidden, dim=-1)
        if len(encoders) > 2:
            t5 = _t5_hidden(encoders[2], tokenizers[2], captions, t5_max_length)
        else:
            width = joint_dim or clip.shape[-1]
            t5 = torch.zeros(len(captions), t5_max_length, width, device=clip.device, dtype=clip.dtype)
        clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
        return PromptEmbeds(torch.cat([clip, t5.to(clip.dtype)], dim=-2), torch.cat(pooled, dim=-1))

    def predict(self, denoiser, noisy, timesteps, embeds, batch) -> torch.Tensor:
        return denoiser(hidden_states=noisy, timestep=timesteps, encoder_hidden_states=embeds.hidden_states.to(noisy.dtype),
                        pooled_projections=embeds.pooled.to(noisy.dtype), return_dict=False)[0]

    def pipeline_embeds(self, pos, neg, dtype) -> dict:
        return {"prompt_embeds": pos.hidden_states.to(dtype), "pooled_prompt_embeds": pos.pooled.to(dtype),
                "negative_prompt_embeds": None if neg is None else neg.hidden_states.to(dtype),
                "negative_pooled_prompt_embeds": None if neg is None else neg.pooled.to(dtype)}

    def check_training(self, cfg) -> list[str]:
        return flow_problems(self.title, cfg)

    def target_presets(self) -> dict[str, list[str]]:
        return SD3_PRESETS

    def save_tiny(self, out_dir, seed: int = 0, words=()):
        from sd_lora.models.tiny_transformers import build_tiny_sd3

        return build_tiny_sd3(out_dir, variant="sd3.5", seed=seed, words=words)

    def dead_targets(self, denoiser_config) -> set[str]:
        # the last joint block only feeds the image stream: its context queries reach nothing
        return {f"transformer_blocks.{self.num_blocks(denoiser_config) - 1}.attn.add_q_proj"}

    def block_index(self, module_name, denoiser_config) -> int | None:
        m = _BLOCK.search(module_name + ".")
        return int(m[1]) if m else None

    def num_blocks(self, denoiser_config) -> int:
        return int(denoiser_config["num_layers"] if isinstance(denoiser_config, dict) else denoiser_config.num_layers)

    def blocks(self, denoiser) -> list[torch.nn.Module]:
        return list(denoiser.transformer_blocks)

    # ---- community files (s6-layer)
    short_name = "SD3"
    community_naming = "original"
    keys = sd3_keys
    kohya_script = "sd3_train_network.py"
    bakes_to_single_file = False

    def default_variant(self) -> str:
        return "sd3.5-medium"

    def file_metadata(self, v_prediction: bool = False, variant: str | None = None) -> dict[str, str]:
        return transformer_file_metadata(*_FILE_SPEC[variant or self.default_variant()])

    def file_recognisers(self):
        return [(10, transformer_detect.sd3_names), (30, transformer_detect.attention_width),
                (41, transformer_detect.sd3_metadata), (50, transformer_detect.sd3_blocks),
                (55, transformer_detect.t5_only)]


# by the model variant (`sd3_keys.variant`), as kohya's sai_model_spec.py and sd3_train_network.py write them:
# (modelspec.architecture, ss_base_model_version, modelspec.implementation)
_FILE_SPEC = {
    "sd3-medium": ("stable-diffusion-3-medium/lora", "medium", "diffusers"),
    "sd3.5-medium": ("stable-diffusion-3-5-medium/lora", "5-medium", "diffusers"),
    "sd3.5-large": ("stable-diffusion-3-5-large/lora", "5-large", "diffusers"),
}


def _t5_hidden(encoder, tokenizer, captions: list[str], max_length: int) -> torch.Tensor:
    device = next(encoder.parameters()).device
    ids = tokenizer(captions, padding="max_length", max_length=max_length, truncation=True,
                    add_special_tokens=True, return_tensors="pt").input_ids
    return encoder(ids.to(device))[0]
