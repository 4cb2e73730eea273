"""Stable Diffusion 2.x: one OpenCLIP ViT-H encoder, linear attention projections, v-prediction at 768 px."""

from __future__ import annotations

from sd_lora.models.families import unet_files
from sd_lora.models.families.unet import UNetFamily


class SD2(UNetFamily):
    name = "sd2"
    title = "Stable Diffusion 2.x"
    community_prefixes = {"unet": "lora_unet_", "text_encoder": "lora_te_"}
    modelspec_architecture = "stable-diffusion-v2-512/lora"
    modelspec_architecture_v = "stable-diffusion-v2-768-v/lora"
    short_name = "SD2"
    base_model_version = "sd_v2"
    ss_v2 = True

    @classmethod
    def matches(cls, model_index, denoiser_config) -> bool:
        return "unet" in model_index and bool(denoiser_config.get("use_linear_projection")
                                              or denoiser_config.get("cross_attention_dim") == 1024)

    def default_resolution(self, v_prediction: bool = False) -> int:
        return 768 if v_prediction else 512

    def file_recognisers(self):
        return super().file_recognisers() + [(81, unet_files.sd2_metadata)]
