"""SD3 / FLUX key naming: every adaptable module of the real architectures (built on the meta device) belongs to
exactly one original-layout group, with the right row widths; the variant read from a config."""

from __future__ import annotations

import pytest
import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

from sd_lora.models.families import flux_keys, sd3_keys

SD3_COMMON = dict(sample_size=128, patch_size=2, in_channels=16, out_channels=16, attention_head_dim=64,
                  joint_attention_dim=4096, pooled_projection_dim=2048, pos_embed_max_size=384)
SD35_MEDIUM = dict(SD3_COMMON, num_layers=24, num_attention_heads=24, caption_projection_dim=1536,
                   dual_attention_layers=tuple(range(13)), qk_norm="rms_norm")
SD35_LARGE = dict(SD3_COMMON, num_layers=38, num_attention_heads=38, caption_projection_dim=2432, qk_norm="rms_norm")
SD3_MEDIUM = dict(SD3_COMMON, num_layers=24, num_attention_heads=24, caption_projection_dim=1536)
FLUX_DEV = dict(patch_size=1, in_channels=64, num_layers=19, num_single_layers=38, attention_head_dim=128,
                num_attention_heads=24, joint_attention_dim=4096, pooled_projection_dim=768, guidance_embeds=True,
                axes_dims_rope=(16, 56, 56))
FLUX_SCHNELL = dict(FLUX_DEV, guidance_embeds=False)


def _meta(cls, config):
    with torch.device("meta"):
        return cls(**config)


def _adaptable(model) -> dict[str, tuple[int, ...]]:
    return {n: tuple(m.weight.shape) for n, m in model.named_modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))}


@pytest.mark.parametrize("keys, cls, config", [
    (sd3_keys, SD3Transformer2DModel, SD35_MEDIUM), (sd3_keys, SD3Transformer2DModel, SD35_LARGE),
    (sd3_keys, SD3Transformer2DModel, SD3_MEDIUM), (flux_keys, FluxTransformer2DModel, FLUX_DEV),
    (flux_keys, FluxTransformer2DModel, FLUX_SCHNELL)])
def test_groups_cover_every_module_once_with_its_width(keys, cls, config):
    model = _meta(cls, config)
    shapes = _adaptable(model)
    groups = keys.groups(model.config)
    parts = [p for g in groups.values() for p in g.parts]
    assert sorted(parts) == sorted(shapes)
    for name, group in groups.items():
        if group.sizes is not None:
            assert [shapes[p][0] for p in group.parts] == list(group.sizes), name
            assert len({shapes[p][1] for p in group.parts}) == 1, name  # the row blocks share the input


def test_fused_groups_are_the_ones_the_peers_fuse():
    sd3 = sd3_keys.groups(SD35_MEDIUM)
    assert sd3["joint_blocks.0.x_block.attn.qkv"].parts == (
        "transformer_blocks.0.attn.to_q", "transformer_blocks.0.attn.to_k", "transformer_blocks.0.attn.to_v")
    assert sd3["joint_blocks.3.context_block.attn.qkv"].parts[0] == "transformer_blocks.3.attn.add_q_proj"
    assert sd3["joint_blocks.12.x_block.attn2.qkv"].sizes == (1536, 1536, 1536)
    assert "joint_blocks.13.x_block.attn2.qkv" not in sd3  # dual attention ends at block 12
    assert "joint_blocks.23.context_block.attn.proj" not in sd3  # the last context block is pre-only
    assert sd3["joint_blocks.23.context_block.adaLN_modulation.1"].swap_halves
    assert not sd3["joint_blocks.22.context_block.adaLN_modulation.1"].swap_halves
    flux = flux_keys.groups(FLUX_DEV)
    assert flux["single_blocks.37.linear1"].sizes == (3072, 3072, 3072, 12288)
    assert flux["single_blocks.37.linear1"].parts[-1] == "single_transformer_blocks.37.proj_mlp"
    assert flux["single_blocks.0.linear2"].parts == ("single_transformer_blocks.0.proj_out",)
    assert flux["double_blocks.18.txt_attn.qkv"].parts[2] == "transformer_blocks.18.attn.add_v_proj"
    assert "guidance_in.in_layer" not in flux_keys.groups(FLUX_SCHNELL)


def test_variant_from_config():
    assert sd3_keys.variant(SD35_MEDIUM) == "sd3.5-medium"
    assert sd3_keys.variant(SD35_LARGE) == "sd3.5-large"
    assert sd3_keys.variant(SD3_MEDIUM) == "sd3-medium"
    assert flux_keys.variant(FLUX_DEV) == "flux-dev"
    assert flux_keys.variant(FLUX_SCHNELL) == "flux-schnell"
    assert sd3_keys.variant(_meta(SD3Transformer2DModel, SD35_LARGE).config) == "sd3.5-large"
