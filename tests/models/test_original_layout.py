"""The original-layout writer is the exact inverse of diffusers' own single-file conversion.

The oracle is diffusers (`convert_ldm_*_checkpoint`, `infer_diffusers_model_type`) and key names
and shapes known from the published SD1.5/SD2/SDXL files, never this module's own output.
"""

from types import SimpleNamespace

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    SD_2_TEXT_ENCODER_KEYS_TO_IGNORE,
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
    infer_diffusers_model_type,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from sd_lora.models.families import unet_architectures as architectures
from sd_lora.models.families.unet_original_layout import PREFIXES, TEXT_PREFIXES, pipeline_to_original
from sd_lora.models.tiny import build_tiny_pipeline


def _encoders(pipe, family):
    return [pipe.text_encoder] + ([pipe.text_encoder_2] if family == "sdxl" else [])


def _back_to_diffusers(original: dict, pipe, family: str) -> list[dict]:
    """Each component's weights as diffusers' own single-file code reads them from `original`."""
    out = [convert_ldm_unet_checkpoint(original, dict(pipe.unet.config)),
           convert_ldm_vae_checkpoint(original, dict(pipe.vae.config))]
    for (prefix, kind), encoder in zip(TEXT_PREFIXES[family], _encoders(pipe, family)):
        sub = {k: v for k, v in original.items() if k.startswith(prefix)}
        if kind == "clip":
            state = convert_ldm_clip_checkpoint(sub)
        else:
            if family == "sd2":  # the tower's last layer is unused by SD2 (diffusers drops resblocks.23)
                last = f"resblocks.{encoder.config.num_hidden_layers}."
                sub = {k: v for k, v in sub.items() if last not in k and not k.endswith("text_projection")}
            state = convert_open_clip_checkpoint(encoder, sub, prefix=prefix)
        if not hasattr(encoder, "text_model"):  # transformers 5 CLIPTextModel has no `text_model.` level
            state = {k.removeprefix("text_model."): v for k, v in state.items()}
        out.append(state)
    return out


def _components(pipe, family):
    return [pipe.unet, pipe.vae] + _encoders(pipe, family)


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_tiny_round_trip_through_diffusers_conversion(family):
    pipe = build_tiny_pipeline(family, seed=3)
    original = pipeline_to_original(pipe, family)
    assert not any(k.startswith(("unet.", "vae.", "text_encoder")) for k in original)
    for model, state in zip(_components(pipe, family), _back_to_diffusers(original, pipe, family)):
        want = {k: v for k, v in model.state_dict().items() if not k.endswith("position_ids")}
        assert set(state) == set(want)
        for key, value in want.items():
            assert torch.equal(state[key], value), key


def _full_size_meta(family: str):
    """A full-size pipeline's components with no memory behind the weights."""
    with torch.device("meta"):
        encoders = []
        for i, cfg in enumerate(architectures.text_encoder_configs(family)):
            cls = CLIPTextModelWithProjection if family == "sdxl" and i == 1 else CLIPTextModel
            encoders.append(cls(CLIPTextConfig(**cfg)))
        unet = UNet2DConditionModel(**architectures.unet_config(family))
        vae = AutoencoderKL(**architectures.vae_config(family))
    return SimpleNamespace(unet=unet, vae=vae, text_encoder=encoders[0], text_encoder_2=encoders[-1])


@pytest.mark.parametrize("family, model_type", [("sd1", "v1"), ("sd2", "v2"), ("sdxl", "xl_base")])
def test_full_size_layout_is_the_published_one(family, model_type):
    pipe = _full_size_meta(family)
    original = pipeline_to_original(pipe, family)
    assert infer_diffusers_model_type(original) == model_type
    for model, state in zip(_components(pipe, family), _back_to_diffusers(original, pipe, family)):
        want = {k: v.shape for k, v in model.state_dict().items() if not k.endswith("position_ids")}
        assert {k: v.shape for k, v in state.items()} == want
    if family == "sd2":  # OpenCLIP-H has 24 layers; SD2 uses 23, but its files hold all of them
        assert set(SD_2_TEXT_ENCODER_KEYS_TO_IGNORE) <= set(original)


def test_full_size_sd1_names_and_shapes_match_the_released_checkpoint():
    original = pipeline_to_original(_full_size_meta("sd1"), "sd1")
    # Entries of v1-5-pruned.safetensors: upsamplers sit after the attention (slot 2) only in attention
    # blocks, the VAE decoder counts up-blocks from the lowest resolution, VAE attention is 1x1 convs.
    known = {
        "model.diffusion_model.output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.5.2.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "model.diffusion_model.input_blocks.1.1.proj_in.weight": (320, 320, 1, 1),
        "model.diffusion_model.middle_block.1.transformer_blocks.0.attn2.to_k.weight": (1280, 768),
        "model.diffusion_model.output_blocks.11.0.skip_connection.weight": (320, 640, 1, 1),
        "model.diffusion_model.time_embed.0.weight": (1280, 320),
        "first_stage_model.decoder.up.0.block.0.conv1.weight": (128, 256, 3, 3),
        "first_stage_model.decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        "first_stage_model.encoder.down.1.block.0.nin_shortcut.weight": (256, 128, 1, 1),
        "first_stage_model.encoder.mid.attn_1.q.weight": (512, 512, 1, 1),
        "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight": (768, 3072),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
    }
    for key, shape in known.items():
        assert tuple(original[key].shape) == shape, key
    assert sum(k.startswith(PREFIXES["unet"]) for k in original) == 686
    assert sum(k.startswith(PREFIXES["vae"]) for k in original) == 248


def test_full_size_sdxl_open_clip_is_fused_and_transposed():
    pipe = _full_size_meta("sdxl")
    original = pipeline_to_original(pipe, "sdxl")
    prefix = PREFIXES["sdxl_2"]
    assert tuple(original[prefix + "transformer.resblocks.31.attn.in_proj_weight"].shape) == (3840, 1280)
    assert tuple(original[prefix + "positional_embedding"].shape) == (77, 1280)
    assert f"{prefix}transformer.resblocks.32.ln_1.weight" not in original
    assert infer_diffusers_model_type(original) == "xl_base"
