"""Stable Diffusion 1.x: one CLIP ViT-L encoder, epsilon prediction, 512 px."""

from __future__ import annotations

import re

from sd_lora.models.families import unet_files
from sd_lora.models.families.unet import UNetFamily


class SD1(UNetFamily):
    name = "sd1"
    title = "Stable Diffusion 1.x"
    community_prefixes = {"unet": "lora_unet_", "text_encoder": "lora_te_"}
    modelspec_architecture = "stable-diffusion-v1/lora"
    short_name = "SD1"
    base_model_version = "sd_v1"
    kohya_script = "train_network.py"

    @classmethod
    def matches(cls, model_index, denoiser_config) -> bool:
        return "unet" in model_index

    def pointwise_conv(self, component: str, path: str) -> bool:
        # SD1's transformer projections are 1x1 convolutions (SD2 / SDXL made them Linear)
        return super().pointwise_conv(component, path) or (
            component == self.denoiser and re.search(r"attentions\.\d+\.proj_(in|out)$", path) is not None)

    def file_recognisers(self):
        return super().file_recognisers() + [(82, unet_files.sd1_metadata)]
