"""Configs of the real Stable Diffusion architectures, shipped so nothing needs the hub.

Used to build full-size models with random weights (key names, shapes, benchmarks) and,
later, to load single-file checkpoints offline. Values are the published model configs.
"""

from __future__ import annotations

import copy

__all__ = ["FAMILIES", "unet_config", "text_encoder_configs", "vae_config", "scheduler_config"]

FAMILIES = ("sd1", "sd2", "sdxl")

_UNET_COMMON = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=[320, 640, 1280, 1280],
    down_block_types=["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"],
    up_block_types=["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"],
    norm_num_groups=32,
)

_UNETS = {
    "sd1": dict(_UNET_COMMON, cross_attention_dim=768, attention_head_dim=8),
    "sd2": dict(
        _UNET_COMMON,
        sample_size=96,
        cross_attention_dim=1024,
        attention_head_dim=[5, 10, 20, 20],
        use_linear_projection=True,
    ),
    "sdxl": dict(
        sample_size=128,
        in_channels=4,
        out_channels=4,
        layers_per_block=2,
        block_out_channels=[320, 640, 1280],
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        transformer_layers_per_block=[1, 2, 10],
        attention_head_dim=[5, 10, 20],
        cross_attention_dim=2048,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=256,
        projection_class_embeddings_input_dim=2816,
        norm_num_groups=32,
    ),
}

_CLIP_L = dict(
    hidden_size=768, intermediate_size=3072, num_attention_heads=12, num_hidden_layers=12,
    hidden_act="quick_gelu", projection_dim=768, vocab_size=49408, max_position_embeddings=77,
)
_OPENCLIP_H = dict(
    hidden_size=1024, intermediate_size=4096, num_attention_heads=16, num_hidden_layers=23,
    hidden_act="gelu", projection_dim=1024, vocab_size=49408, max_position_embeddings=77,
)
_OPENCLIP_BIGG = dict(
    hidden_size=1280, intermediate_size=5120, num_attention_heads=20, num_hidden_layers=32,
    hidden_act="gelu", projection_dim=1280, vocab_size=49408, max_position_embeddings=77,
)

_VAE = dict(
    in_channels=3,
    out_channels=3,
    latent_channels=4,
    block_out_channels=[128, 256, 512, 512],
    down_block_types=["DownEncoderBlock2D"] * 4,
    up_block_types=["UpDecoderBlock2D"] * 4,
    layers_per_block=2,
    norm_num_groups=32,
    sample_size=512,
)


def unet_config(family: str) -> dict:
    """UNet2DConditionModel kwargs of the real model of `family`."""
    return copy.deepcopy(_UNETS[family])


def text_encoder_configs(family: str) -> list[dict]:
    """CLIPTextConfig kwargs, one per text encoder (SDXL has two; the second has a projection)."""
    return {"sd1": [_CLIP_L], "sd2": [_OPENCLIP_H], "sdxl": [_CLIP_L, _OPENCLIP_BIGG]}[family]


def vae_config(family: str) -> dict:
    cfg = copy.deepcopy(_VAE)
    cfg["scaling_factor"] = 0.13025 if family == "sdxl" else 0.18215
    return cfg


def scheduler_config(family: str, prediction_type: str = "epsilon") -> dict:
    """The training noise schedule every SD family shares (scaled-linear betas, 1000 steps)."""
    return dict(
        num_train_timesteps=1000,
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        prediction_type=prediction_type,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )
