import pytest
import torch

from sd_lora.models import tiny_transformers as tt


def _generate(pipe, **kw):
    return pipe("a red cat", num_inference_steps=2, height=32, width=32, output_type="pt",
                generator=torch.Generator().manual_seed(0), **kw).images


@pytest.mark.parametrize("variant", ["sd3", "sd3.5"])
def test_tiny_sd3_saves_reloads_offline_and_generates(tmp_path, variant):
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline

    folder = tt.build_tiny_sd3(tmp_path / "m", variant, words=["cat"])
    pipe = StableDiffusion3Pipeline.from_pretrained(str(folder), local_files_only=True)
    cfg = pipe.transformer.config
    assert (tuple(cfg.dual_attention_layers), cfg.qk_norm) == (((0,), "rms_norm") if variant == "sd3.5" else ((), None))
    assert (pipe.transformer.transformer_blocks[0].attn2 is not None) == (variant == "sd3.5")
    assert cfg.in_channels == pipe.vae.config.latent_channels == 16
    assert (pipe.vae.config.scaling_factor, pipe.vae.config.shift_factor) == tt.SD3_VAE_FACTORS
    assert isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler) and pipe.scheduler.config.shift == 3.0
    # SD3 pads the CLIP-L + CLIP-G hidden states to T5's width and concatenates their pooled outputs
    assert cfg.joint_attention_dim == pipe.text_encoder_3.config.d_model
    assert cfg.joint_attention_dim >= pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    pooled = pipe.text_encoder.config.projection_dim + pipe.text_encoder_2.config.projection_dim
    assert cfg.pooled_projection_dim == pooled
    image = _generate(pipe)
    assert image.shape == (1, 3, 32, 32) and torch.isfinite(image).all()
    # the default size (from sample_size) is a 32 px image as well
    default = pipe("x", num_inference_steps=1, output_type="pt", generator=torch.Generator().manual_seed(0)).images
    assert default.shape == (1, 3, 32, 32)


@pytest.mark.parametrize("variant", ["dev", "schnell"])
def test_tiny_flux_saves_reloads_offline_and_generates(tmp_path, variant):
    from diffusers import FluxPipeline

    folder = tt.build_tiny_flux(tmp_path / "m", variant)
    pipe = FluxPipeline.from_pretrained(str(folder), local_files_only=True)
    cfg = pipe.transformer.config
    assert cfg.guidance_embeds == (variant == "dev")
    assert cfg.in_channels == 4 * pipe.vae.config.latent_channels == 64  # 2x2 packed patches
    assert sum(cfg.axes_dims_rope) == cfg.attention_head_dim
    assert cfg.joint_attention_dim == pipe.text_encoder_2.config.d_model
    assert cfg.pooled_projection_dim == pipe.text_encoder.config.hidden_size
    assert (pipe.vae.config.scaling_factor, pipe.vae.config.shift_factor) == tt.FLUX_VAE_FACTORS
    sched = pipe.scheduler.config
    assert {k: sched[k] for k in tt.FLUX_SCHEDULER_CONFIG} == tt.FLUX_SCHEDULER_CONFIG
    assert sched.use_dynamic_shifting and (sched.base_shift, sched.max_shift) == (0.5, 1.15)
    image = _generate(pipe, guidance_scale=3.5)
    assert image.shape == (1, 3, 32, 32) and torch.isfinite(image).all()
    wide = pipe("x", num_inference_steps=1, height=32, width=64, output_type="pt",
                generator=torch.Generator().manual_seed(0)).images
    assert wide.shape == (1, 3, 32, 64)


def test_tiny_pipelines_are_seeded():
    a = tt.tiny_flux_pipeline("schnell", seed=3).transformer.state_dict()
    b = tt.tiny_flux_pipeline("schnell", seed=3).transformer.state_dict()
    c = tt.tiny_flux_pipeline("schnell", seed=4).transformer.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_unknown_variant_is_refused(tmp_path):
    with pytest.raises(ValueError, match="sd3 or sd3.5"):
        tt.build_tiny_sd3(tmp_path, "sd4")
    with pytest.raises(ValueError, match="dev or schnell"):
        tt.build_tiny_flux(tmp_path, "pro")


def test_t5_tokenizer_made_in_code_round_trips(tmp_path):
    from transformers import T5TokenizerFast

    folder = tt.write_t5_tokenizer_files(tmp_path / "t5", words=["photo", "cat"])
    tok = T5TokenizerFast.from_pretrained(str(folder), local_files_only=True)
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    enc = tok("a photo of a cat, 2 cats!", padding="max_length", max_length=24)
    assert tok.convert_ids_to_tokens(enc.input_ids[:3]) == ["▁a", "▁photo", "▁o"]  # listed words stay whole
    assert enc.input_ids.index(1) == len(tok("a photo of a cat, 2 cats!").input_ids) - 1  # </s> ends the text
    assert enc.input_ids[-1] == 0 and enc.attention_mask[-1] == 0
    assert tok.decode(enc.input_ids, skip_special_tokens=True) == "a photo of a cat, 2 cats!"
    assert tok("é").input_ids == [tok.convert_tokens_to_ids("▁"), 2, 1]  # outside the alphabet: <unk>
    tok.save_pretrained(str(tmp_path / "again"))
    again = T5TokenizerFast.from_pretrained(str(tmp_path / "again"), local_files_only=True)
    assert again("a photo of a cat, 2 cats!").input_ids == tok("a photo of a cat, 2 cats!").input_ids
    assert len(again) == len(tok)


# published sizes: SD3 Medium 2B, SD3.5 Medium 2.5B, SD3.5 Large 8.1B, FLUX.1 11.9B (weights in the checkpoint,
# SD3's fixed position-embedding table included)
@pytest.mark.parametrize("name, billions", [("sd3-medium", 2.08), ("sd3.5-medium", 2.47), ("sd3.5-large", 8.1),
                                            ("flux.1-dev", 11.9), ("flux.1-schnell", 11.9)])
def test_full_size_transformers_on_meta_have_the_published_sizes(name, billions):
    model = tt.meta_transformer(name)
    assert next(model.parameters()).device.type == "meta"
    count = sum(t.numel() for t in model.state_dict().values())
    assert count / 1e9 == pytest.approx(billions, rel=0.02)


def test_full_size_shapes_follow_the_configs():
    medium = tt.meta_transformer("sd3.5-medium")
    assert [b.attn2 is not None for b in medium.transformer_blocks] == [True] * 13 + [False] * 11
    assert medium.pos_embed.pos_embed.shape == (1, 384 * 384, 1536)
    large = tt.meta_transformer("sd3.5-large")
    assert len(large.transformer_blocks) == 38 and large.transformer_blocks[0].attn.norm_q is not None
    dev, schnell = tt.meta_transformer("flux.1-dev"), tt.meta_transformer("flux.1-schnell")
    assert (len(dev.transformer_blocks), len(dev.single_transformer_blocks)) == (19, 38)
    assert hasattr(dev.time_text_embed, "guidance_embedder")
    assert not hasattr(schnell.time_text_embed, "guidance_embedder")
    assert dev.x_embedder.weight.shape == (3072, 64)
    with pytest.raises(ValueError, match="sd3.5-medium"):
        tt.meta_transformer("sd3.5-turbo")
