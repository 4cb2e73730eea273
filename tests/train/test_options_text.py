"""Clip skip and long captions (issue 15 items 1 and 2): the encoder, training runs, and generation."""

import json

import pytest
import torch
from safetensors import safe_open

from sd_lora.models.encode import token_windows, windows_needed
from sd_lora.models.families import get_family
from sd_lora.models.load import load_pipeline
from tests.train.conftest import tiny_config, write_dataset

LONG = ", ".join(f"tag{i} red blue" for i in range(40))  # well over 75 tokens


@pytest.fixture(scope="module")
def sd1(tiny_sd1_dir):
    return load_pipeline(str(tiny_sd1_dir))[0]


@pytest.fixture(scope="module")
def sdxl(tiny_sdxl_dir):
    return load_pipeline(str(tiny_sdxl_dir))[0]


def test_token_windows_wrap_each_75_tokens(sd1):
    tok = sd1.tokenizer
    raw = tok(LONG, add_special_tokens=False).input_ids
    assert len(raw) > 150
    ids = token_windows(tok, [LONG], windows=2)
    assert ids.shape == (2, 77)
    bos, eos = tok.bos_token_id, tok.eos_token_id
    assert ids[0].tolist() == [bos, *raw[:75], eos]
    assert ids[1].tolist() == [bos, *raw[75:150], eos]
    assert windows_needed(tok, [LONG, "a"]) == -(-len(raw) // 75)
    short = token_windows(tok, ["a red square"], windows=1)  # one window = the usual padded tokenisation
    assert short.tolist() == tok(["a red square"], padding="max_length", max_length=77, truncation=True).input_ids


def test_long_caption_hidden_states_are_the_windows_concatenated(sd1):
    te = sd1.text_encoder
    with torch.no_grad():
        out = get_family("sd1").encode_prompts([te], [sd1.tokenizer], [LONG], windows=3).hidden_states
        ids = token_windows(sd1.tokenizer, [LONG], windows=3)
        each = [te(ids[i:i + 1])[0] for i in range(3)]
    assert out.shape[1] == 3 * 77
    assert torch.equal(out, torch.cat(each, dim=1))


def test_clip_skip_sd1_is_the_penultimate_layer_through_the_final_norm(sd1):
    te, tok = sd1.text_encoder, sd1.tokenizer
    ids = tok(["a red square"], padding="max_length", max_length=77, return_tensors="pt").input_ids
    with torch.no_grad():
        hidden = te(ids, output_hidden_states=True).hidden_states
        expected = te.text_model.final_layer_norm(hidden[-2]) if hasattr(te, "text_model") else \
            te.final_layer_norm(hidden[-2])
        got = get_family("sd1").encode_prompts([te], [tok], ["a red square"], clip_skip=2).hidden_states
        last = get_family("sd1").encode_prompts([te], [tok], ["a red square"], clip_skip=1).hidden_states
    assert torch.allclose(got, expected)
    assert torch.equal(last, te(ids)[0])
    assert not torch.allclose(got, last)


def test_sdxl_matches_the_diffusers_pipeline_with_and_without_clip_skip(sdxl):
    encoders, toks = [sdxl.text_encoder, sdxl.text_encoder_2], [sdxl.tokenizer, sdxl.tokenizer_2]
    with torch.no_grad():
        for ours, theirs in ((1, None), (2, 1)):  # diffusers counts clip skip from 0
            pe, _, pooled, _ = sdxl.encode_prompt("a red square", device="cpu", do_classifier_free_guidance=False,
                                                  clip_skip=theirs)
            got = get_family("sdxl").encode_prompts(encoders, toks, ["a red square"], clip_skip=ours)
            assert torch.allclose(got.hidden_states, pe, atol=1e-6)
            assert torch.allclose(got.pooled, pooled, atol=1e-6)
        long = get_family("sdxl").encode_prompts(encoders, toks, [LONG], windows=2)
        first = get_family("sdxl").encode_prompts(encoders, toks, [LONG], windows=1)
    assert long.hidden_states.shape[1] == 154
    assert torch.allclose(long.pooled, first.pooled, atol=1e-5)  # pooled from the first window
    assert torch.allclose(long.hidden_states[:, :77], first.hidden_states, atol=1e-5)


def test_training_run_with_clip_skip_and_long_captions_records_both(tiny_sd1_dir, tmp_path):
    from sd_lora.train.recipe import LoRARecipe

    data = write_dataset(tmp_path / "data", n=2)
    head = ", ".join(f"tag{i} red blue" for i in range(13))
    tok = load_pipeline(str(tiny_sd1_dir))[0].tokenizer
    assert 150 < len(tok(head, add_special_tokens=False).input_ids) < 200  # the endings fall in the third window
    (data / "img0.txt").write_text(head + ", ending one")
    (data / "img1.txt").write_text(head + ", ending two, other words")
    cfg = tiny_config(tiny_sd1_dir, data, tmp_path / "out", train={"max_steps": 2, "clip_skip": 2},
                      data={"max_token_length": 225, "cache_text_encoder_outputs": True})
    recipe = LoRARecipe(cfg)
    try:
        recipe.setup()
        dataset = recipe.dataloader.dataset
        assert dataset.text_cache is not None
        embeds = {s["caption"]: s["text_embeds"]["hidden_states"] for s in (dataset[(i, 0)] for i in range(2))}
        recipe.train()
        result = recipe.save()
    finally:
        recipe.cleanup()
    a, b = embeds.values()
    assert a.shape == (3 * 77, a.shape[-1])
    assert not torch.allclose(a[154:], b[154:])  # the endings beyond 150 tokens reach the encoder
    with safe_open(str(result.adapter_path), "pt") as f:
        meta = f.metadata()
    assert meta["ss_clip_skip"] == "2" and meta["ss_max_token_length"] == "225"
    assert json.loads(meta["sd_lora.inference_recipe"])["clip_skip"] == 2


def test_generation_reads_tokens_past_75(tiny_sd1_dir):
    from sd_lora.inference import GenerationRequest, generate_images, load_generation_pipeline

    pipe, _ = load_generation_pipeline(str(tiny_sd1_dir), device="cpu")
    base = dict(seed=1, steps=2, width=32, height=32, guidance=7.5)
    short = pipe("a red square", num_inference_steps=2, width=32, height=32, output_type="np",
                 generator=torch.Generator().manual_seed(1)).images[0]
    ours = generate_images(pipe, [GenerationRequest("a red square", **base)], progress=False)[0].array
    assert (ours == short).all()  # one window: exactly what the diffusers pipeline encodes
    a, b = generate_images(pipe, [GenerationRequest(LONG + ", red", **base), GenerationRequest(LONG + ", blue", **base)],
                           progress=False)
    assert not (a.array == b.array).all()
