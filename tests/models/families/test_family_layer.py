"""The family layer: detection, settings a family refuses, SD3 conditioning against diffusers' own pipeline,
SD3 adapter presets and block indexing."""

from __future__ import annotations

import pytest
import torch

from sd_lora.config.schema import Config
from sd_lora.models.families import FAMILIES, family_of_pipeline, get_family, settings_problems


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_unet_pipelines_are_recognised(request, family):
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(str(request.getfixturevalue(f"tiny_{family}_dir")))
    assert family_of_pipeline(pipe).name == family


def test_sd3_pipeline_is_recognised_and_its_parts_skip_a_missing_t5(tiny_sd3_pipe):
    family = family_of_pipeline(tiny_sd3_pipe)
    parts = family.parts(tiny_sd3_pipe)
    assert family.name == "sd3" and parts.denoiser is tiny_sd3_pipe.transformer
    assert parts.text_encoder_names == ["text_encoder", "text_encoder_2"]  # loaded without T5


def test_unknown_family_is_a_clear_error():
    from sd_lora.errors import SdLoraError

    with pytest.raises(SdLoraError, match="unknown model family 'sd4'; expected one of: flux, sd3, sdxl, sd2, sd1"):
        get_family("sd4")


def _cfg(**sections):
    cfg = Config()
    for section, values in sections.items():
        for key, value in values.items():
            setattr(getattr(cfg, section), key, value)
    return cfg


def test_sd3_refuses_noise_prediction_settings_each_named():
    cfg = _cfg(train={"min_snr_gamma": 5.0, "zero_terminal_snr": True, "noise_offset": 0.1},
               model={"prediction_type": "v_prediction"})
    problems = settings_problems(get_family("sd3"), cfg)
    assert [p.split(":")[0] for p in problems] == ["train.min_snr_gamma", "train.zero_terminal_snr",
                                                   "train.noise_offset", "model.prediction_type"]
    assert settings_problems(get_family("sd3"), _cfg()) == []


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_another_familys_own_settings_are_refused(family):
    problems = settings_problems(get_family(family), _cfg(data={"t5_max_length": 128}, model={"t5": False}))
    assert len(problems) == 2
    assert all("only read for Stable Diffusion 3 / 3.5 models" in p for p in problems)
    assert problems[0].startswith("model.t5 = False") and problems[1].startswith("data.t5_max_length = 128")
    assert settings_problems(get_family(family), _cfg(train={"min_snr_gamma": 5.0})) == []


def test_sd3_conditioning_equals_diffusers_encode_prompt(tiny_sd3_pipe):
    pipe, family = tiny_sd3_pipe, get_family("sd3")
    parts = family.parts(pipe)
    prompts = ["a red square", "a blue circle on a red ground"]
    with torch.no_grad():
        ours = family.encode_prompts(parts.text_encoders, parts.tokenizers, prompts,
                                     **family.encode_options(parts.denoiser))
        embeds, _, pooled, _ = pipe.encode_prompt(prompts, prompts, prompts, do_classifier_free_guidance=False,
                                                  max_sequence_length=256)
    assert ours.hidden_states.shape == (2, 77 + 256, pipe.transformer.config.joint_attention_dim)
    torch.testing.assert_close(ours.hidden_states, embeds, rtol=0, atol=0)
    torch.testing.assert_close(ours.pooled, pooled, rtol=0, atol=0)
    with torch.no_grad():  # clip skip 2 is one layer further back, as diffusers' clip_skip=1
        ours2 = family.encode_prompts(parts.text_encoders, parts.tokenizers, prompts, clip_skip=2,
                                      **family.encode_options(parts.denoiser))
        embeds2, *_ = pipe.encode_prompt(prompts, prompts, prompts, do_classifier_free_guidance=False, clip_skip=1,
                                         max_sequence_length=256)
    torch.testing.assert_close(ours2.hidden_states, embeds2, rtol=0, atol=0)


def test_sd3_presets_and_block_index(tiny_sd3_pipe):
    from sd_lora.adapters.targets import resolve_targets

    family, transformer = get_family("sd3"), tiny_sd3_pipe.transformer
    n_blocks = transformer.config.num_layers
    dual = len(transformer.config.dual_attention_layers)
    attn = resolve_targets(transformer, "transformer", preset="attn", presets=family.target_presets()).names
    # every joint block: q/k/v/out of both streams (the last block has no context output), plus a second
    # self-attention in the dual-attention layers
    last_context_out = int(transformer.transformer_blocks[-1].attn.to_add_out is None)
    assert len(attn) == n_blocks * 8 - last_context_out + dual * 4
    full = resolve_targets(transformer, "transformer", preset="full", presets=family.target_presets()).names
    assert set(attn) < set(full) and any(n.endswith("norm1.linear") for n in full)
    indexes = {family.block_index(n, transformer.config) for n in attn}
    assert indexes == set(range(n_blocks)) and family.num_blocks(transformer.config) == n_blocks
    assert family.block_index("pos_embed.proj", transformer.config) is None


def test_every_family_has_what_the_layer_needs():
    for name, family in FAMILIES.items():
        assert family.name == name and family.title and family.denoiser in ("unet", "transformer")
        assert family.objective in ("ddpm", "flow") and family.target_presets()
        assert set(family.target_presets()) == {"attn", "attn-mlp", "full"}
