"""Stable Diffusion 1.x: one CLIP ViT-L encoder, epsilon prediction, 512 px."""

from __future__ import annotations

from sd_lora.models.families.unet import UNetFamily


class SD1(UNetFamily):
    name = "sd1"
    title = "Stable Diffusion 1.x"
    community_prefixes = {"unet": "lora_unet_", "text_encoder": "lora_te_"}
    modelspec_architecture = "stable-diffusion-v1/lora"

    @classmethod
    def matches(cls, model_index, denoiser_config) -> bool:
        return "unet" in model_index
