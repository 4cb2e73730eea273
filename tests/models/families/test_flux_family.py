"""The FLUX.1 family on tiny dev and schnell pipelines: conditioning and the transformer call as FluxPipeline makes
them, presets, block indexes, detection, refused settings."""

import pytest
import torch

from sd_lora.config.load import config_from_dict
from sd_lora.models.encode import PromptEmbeds
from sd_lora.models.families import FAMILIES, family_of_pipeline, get_family, settings_problems


@pytest.fixture(scope="module")
def dev(tiny_flux_dir):
    from diffusers import FluxPipeline

    return FluxPipeline.from_pretrained(str(tiny_flux_dir))


@pytest.fixture(scope="module")
def schnell(tiny_flux_schnell_dir):
    from diffusers import FluxPipeline

    return FluxPipeline.from_pretrained(str(tiny_flux_schnell_dir))


def _cfg(**sections):
    data = {"model": {"pretrained": "x"}, "data": {"dir": "d"}, **sections}
    return config_from_dict(data)


def test_detected_with_its_variant_and_the_dev_licence_note(dev, schnell):
    family = family_of_pipeline(dev)
    assert family.name == "flux" and family_of_pipeline(schnell) is family
    dev_lines, schnell_lines = family.describe(dev), family.describe(schnell)
    assert "FLUX.1 dev" in dev_lines[0] and any("Non-Commercial License" in line for line in dev_lines)
    assert "schnell" in schnell_lines[0] and not any("Non-Commercial" in line for line in schnell_lines)


@pytest.mark.parametrize("length", [None, 64])
def test_conditioning_equals_diffusers_encode_prompt(dev, length):
    family = get_family("flux")
    parts = family.parts(dev)
    prompts = ["a red square", "a blue circle on a red ground"]
    data = _cfg(data={"dir": "d", "t5_max_length": length}).data
    with torch.no_grad():
        ours = family.encode_prompts(parts.text_encoders, parts.tokenizers, prompts,
                                     **family.encode_options(parts.denoiser, data))
        embeds, pooled, _ = dev.encode_prompt(prompts, prompts, max_sequence_length=length or 512)
    assert ours.hidden_states.shape == (2, length or 512, dev.transformer.config.joint_attention_dim)
    torch.testing.assert_close(ours.hidden_states, embeds, rtol=0, atol=0)
    torch.testing.assert_close(ours.pooled, pooled, rtol=0, atol=0)


@pytest.mark.parametrize("variant", ["dev", "schnell"])
def test_predict_equals_a_fluxpipeline_style_call(dev, schnell, variant):
    from diffusers import FluxPipeline

    pipe = dev if variant == "dev" else schnell
    family, transformer = get_family("flux"), pipe.transformer
    torch.manual_seed(0)
    noisy = torch.randn(2, 16, 8, 12)  # not square: rows and columns must not be swapped
    timesteps = torch.tensor([250.0, 900.0])
    embeds = PromptEmbeds(torch.randn(2, 7, transformer.config.joint_attention_dim),
                          torch.randn(2, transformer.config.pooled_projection_dim))
    with torch.no_grad():
        ours = family.predict(transformer, noisy, timesteps, embeds, {}, guidance_scale=3.5)
        packed = FluxPipeline._pack_latents(noisy, 2, 16, 8, 12)
        guidance = torch.full((2,), 3.5) if variant == "dev" else None
        theirs = transformer(hidden_states=packed, timestep=timesteps / 1000, guidance=guidance,
                             pooled_projections=embeds.pooled, encoder_hidden_states=embeds.hidden_states,
                             txt_ids=torch.zeros(7, 3), img_ids=FluxPipeline._prepare_latent_image_ids(1, 4, 6, "cpu",
                                                                                                       torch.float32),
                             return_dict=False)[0]
        theirs = FluxPipeline._unpack_latents(theirs, 8, 12, vae_scale_factor=1)
    assert ours.shape == noisy.shape
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    if variant == "dev":  # the guidance value reaches the model
        with torch.no_grad():
            other = family.predict(transformer, noisy, timesteps, embeds, {}, guidance_scale=1.0)
        assert not torch.allclose(other, ours)


def test_presets_and_block_index(dev):
    from sd_lora.adapters.targets import resolve_targets

    family, transformer = get_family("flux"), dev.transformer
    presets, config = family.target_presets(), transformer.config
    double, single = config.num_layers, config.num_single_layers
    attn = resolve_targets(transformer, "transformer", preset="attn", presets=presets).names
    assert len(attn) == double * 8 + single * 3
    mlp = set(resolve_targets(transformer, "transformer", preset="attn-mlp", presets=presets).names)
    assert f"single_transformer_blocks.{single - 1}.proj_out" in mlp and "proj_out" in mlp
    assert "proj_out" in family.dead_targets(config)  # the final layer shares the suffix; the recipe leaves it out
    full = set(resolve_targets(transformer, "transformer", preset="full", presets=presets).names)
    assert {"transformer_blocks.0.norm1.linear", "transformer_blocks.0.norm1_context.linear",
            "single_transformer_blocks.0.norm.linear"} <= full and set(attn) < mlp < full
    assert "norm_out.linear" not in full
    assert {family.block_index(n, config) for n in attn} == set(range(double + single))
    assert family.block_index(f"single_transformer_blocks.{single - 1}.attn.to_q", config) == double + single - 1
    assert family.block_index("transformer_blocks.1.attn.to_q", config) == 1
    assert family.block_index("x_embedder", config) is None
    assert family.num_blocks(config) == double + single == len(family.block_names(config))
    assert family.blocks(transformer) == [*transformer.transformer_blocks, *transformer.single_transformer_blocks]


def test_refused_and_shared_settings():
    flux = get_family("flux")
    problems = settings_problems(flux, _cfg(train={"min_snr_gamma": 5.0, "clip_skip": 2}, model={"t5": False}))
    assert [p.split(" ")[0].rstrip(":") for p in problems] == ["model.t5", "train.min_snr_gamma", "train.clip_skip"]
    # the T5 length is read by SD3 and FLUX alike; the training guidance only by FLUX
    assert settings_problems(flux, _cfg(data={"dir": "d", "t5_max_length": 128},
                                        train={"guidance_scale": 3.5})) == []
    assert settings_problems(get_family("sd3"), _cfg(data={"dir": "d", "t5_max_length": 128})) == []
    sd1 = settings_problems(get_family("sd1"), _cfg(train={"guidance_scale": 3.5}))
    assert len(sd1) == 1 and sd1[0].startswith("train.guidance_scale = 3.5 is only read for FLUX.1 models")


def test_every_family_lists_its_blocks(tiny_sd1_dir):
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel.from_pretrained(str(tiny_sd1_dir), subfolder="unet")
    blocks = FAMILIES["sd1"].blocks(unet)
    assert blocks == [*unet.down_blocks, unet.mid_block, *unet.up_blocks]
    assert all(hasattr(f, "blocks") for f in FAMILIES.values())
