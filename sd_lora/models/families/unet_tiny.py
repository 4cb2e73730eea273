"""Tiny SD1 / SD2 / SDXL pipelines: the real families' component classes and block topology (SD1: conv
projections, epsilon; SD2: linear projections, v-prediction; SDXL: two text encoders, text_time embedding) with
small widths."""

from __future__ import annotations

from pathlib import Path

import torch

from sd_lora.models.families.unet_architectures import scheduler_config
from sd_lora.models.tiny import _TE_WIDTH, _text_encoder, _tokenizer

__all__ = ["build_tiny_unet_pipeline"]


def _unet(family: str, cross_dim: int):
    from diffusers import UNet2DConditionModel

    if family == "sdxl":
        return UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(32, 64, 64),
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            transformer_layers_per_block=(1, 1, 2), attention_head_dim=(2, 4, 4),
            cross_attention_dim=cross_dim, use_linear_projection=True, norm_num_groups=16,
            addition_embed_type="text_time", addition_time_embed_dim=8,
            projection_class_embeddings_input_dim=6 * 8 + _TE_WIDTH,
        )
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_dim, attention_head_dim=(2, 4) if family == "sd2" else 8,
        use_linear_projection=family == "sd2", norm_num_groups=16,
    )


def _vae(family: str):
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1, norm_num_groups=16, sample_size=32,
        scaling_factor=0.13025 if family == "sdxl" else 0.18215,
    )


def build_tiny_unet_pipeline(family: str, seed: int = 0, words: list[str] = (), tmp_dir: str | Path | None = None):
    """A tiny diffusers pipeline of `family` ('sd1', 'sd2', 'sdxl') with seeded random weights.

    The VAE downsamples by 2 (not 8), so a 32 px image is a 16x16 latent.
    """
    import tempfile

    from diffusers import DDIMScheduler, StableDiffusionPipeline, StableDiffusionXLPipeline

    if family not in ("sd1", "sd2", "sdxl"):
        raise ValueError(f"unknown family {family!r}; expected sd1, sd2 or sdxl")
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer = _tokenizer(Path(tmp_dir or scratch) / "tokenizer", words)
    prediction = "v_prediction" if family == "sd2" else "epsilon"
    scheduler = DDIMScheduler(**scheduler_config(family, prediction))
    if family == "sdxl":
        te1 = _text_encoder(tokenizer, with_projection=False)
        te2 = _text_encoder(tokenizer, with_projection=True, hidden_act="gelu")
        return StableDiffusionXLPipeline(
            vae=_vae(family), text_encoder=te1, text_encoder_2=te2, tokenizer=tokenizer, tokenizer_2=tokenizer,
            unet=_unet(family, 2 * _TE_WIDTH), scheduler=scheduler,
        )
    te = _text_encoder(tokenizer, with_projection=False, hidden_act="gelu" if family == "sd2" else "quick_gelu")
    return StableDiffusionPipeline(
        vae=_vae(family), text_encoder=te, tokenizer=tokenizer, unet=_unet(family, _TE_WIDTH),
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
