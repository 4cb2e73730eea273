"""Stable Diffusion XL: two CLIP encoders (penultimate layers, pooled projection) and size/crop
micro-conditioning through the UNet's text_time embedding."""

from __future__ import annotations

import torch

from sd_lora.models.encode import PromptEmbeds, encode_clip, sdxl_time_ids
from sd_lora.models.families import unet_files
from sd_lora.models.families.unet import UNetFamily


class SDXL(UNetFamily):
    name = "sdxl"
    title = "Stable Diffusion XL"
    text_encoders = ("text_encoder", "text_encoder_2")
    tokenizers = ("tokenizer", "tokenizer_2")
    vae_scaling_factor = 0.13025
    penultimate = True
    community_prefixes = {"unet": "lora_unet_", "text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_"}
    modelspec_architecture = "stable-diffusion-xl-v1-base/lora"
    short_name = "SDXL"
    community_naming = "sgm"
    kohya_script = "sdxl_train_network.py"
    base_model_version = "sdxl_base_v1-0"
    v_suffix = ""
    implementation = "https://github.com/Stability-AI/generative-models"

    @classmethod
    def matches(cls, model_index, denoiser_config) -> bool:
        return "unet" in model_index and ("text_encoder_2" in model_index
                                          or denoiser_config.get("addition_embed_type") == "text_time")

    def default_resolution(self, v_prediction: bool = False) -> int:
        return 1024

    def file_recognisers(self):
        return super().file_recognisers() + [(60, unet_files.two_text_encoders), (61, unet_files.sgm_blocks),
                                             (80, unet_files.sdxl_metadata)]

    def recognise_components(self, components) -> str | None:
        # the only UNet family with a second text encoder
        if "text_encoder_2" in components and set(components) <= set(self.community_prefixes):
            return "it adapts text_encoder_2"
        return None

    def encode_prompts(self, encoders, tokenizers, captions, clip_skip=None, windows=1, **options) -> PromptEmbeds:
        """Both encoders' penultimate hidden states (clip skip N: one layer further back per step), concatenated,
        plus the pooled projection of the second."""
        hidden, pooled = encode_clip(encoders, tokenizers, captions, clip_skip, windows, penultimate=True)
        return PromptEmbeds(torch.cat(hidden, dim=-1), pooled[-1])

    def zero_negative(self, pipe, negative_prompt: str) -> bool:
        return not negative_prompt and bool(pipe.config.get("force_zeros_for_empty_prompt", False))

    def added_conditions(self, embeds, batch, device) -> dict:
        time_ids = sdxl_time_ids(batch["original_size"], batch["crop_top_left"], batch["target_size"])
        return {"text_embeds": embeds.pooled, "time_ids": time_ids.to(device, embeds.pooled.dtype)}

    def pipeline_embeds(self, pos, neg, dtype) -> dict:
        out = super().pipeline_embeds(pos, neg, dtype)
        out.update(pooled_prompt_embeds=pos.pooled.to(dtype),
                   negative_pooled_prompt_embeds=None if neg is None else neg.pooled.to(dtype))
        return out
