"""The shipped `builtin:tiny` base model: loads offline as an SD1 pipeline and follows colour prompts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import sd_lora
from sd_lora.models.shapes import SHAPES, centre_colour

TINY = Path(sd_lora.__file__).resolve().parent / "builtin" / "tiny"
COLOURS = ("red", "green", "blue", "yellow", "purple", "orange")


@pytest.fixture(scope="module")
def pipe():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(TINY), local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_directory_is_a_small_sd1_diffusers_model():
    index = json.loads((TINY / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["safety_checker"] == [None, None] and index["feature_extractor"] == [None, None]
    weights = list(TINY.rglob("*.safetensors"))
    assert {w.parent.name for w in weights} == {"unet", "vae", "text_encoder"}
    total = sum(f.stat().st_size for f in TINY.rglob("*") if f.is_file())
    assert total / 2 <= 25_000_000  # stored float32; the limit is 25 MB in fp16
    assert not list(TINY.rglob("*.bin")) and not list(TINY.rglob("*.ckpt"))
    card = (TINY / "MODEL_CARD.md").read_text()
    assert "scripts/make_tiny_base.py" in card


def test_components_are_the_sd1_classes(pipe):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    assert isinstance(pipe.unet, UNet2DConditionModel) and isinstance(pipe.vae, AutoencoderKL)
    assert isinstance(pipe.text_encoder, CLIPTextModel)
    assert pipe.unet.config.cross_attention_dim == pipe.text_encoder.config.hidden_size
    assert not pipe.unet.config.use_linear_projection
    cfg = pipe.scheduler.config
    assert (cfg.prediction_type, cfg.beta_schedule, cfg.num_train_timesteps) == ("epsilon", "scaled_linear", 1000)
    assert {p.dtype for p in pipe.components["unet"].parameters()} == {torch.float32}
    assert {p.dtype for p in pipe.text_encoder.parameters()} == {torch.float32}


def test_corpus_words_are_single_tokens(pipe):
    for word in ("red", "circle", "background", "sdlstyle"):
        assert len(pipe.tokenizer(word).input_ids) == 3, word


def test_default_output_is_the_training_size(pipe):
    image = pipe("a large red circle", num_inference_steps=2, output_type="np",
                 generator=torch.Generator().manual_seed(0)).images[0]
    assert image.shape == (32, 32, 3)


def test_generated_shapes_follow_the_prompt_colour(pipe):
    # 6 colours x 5 shapes x 4 seeds (120 images) at the pipeline's default guidance (7.5), 20 DDIM steps.
    # "a large <colour> <shape>" has no position: the shape fills the middle and often reaches the border,
    # so its colour is read from the centre (see `centre_colour`).
    prompts = [f"a large {c} {SHAPES[(i + k) % len(SHAPES)]}" for i, c in enumerate(COLOURS) for k in range(5)]
    found = []
    seeds = (100, 200, 300, 400)
    for seed in seeds:
        generators = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts))]
        images = pipe(prompts, num_inference_steps=20, output_type="np", generator=generators).images
        found += [centre_colour(im) for im in images]
    wanted = [p.split()[2] for p in prompts] * len(seeds)
    accuracy = sum(f == w for f, w in zip(found, wanted)) / len(wanted)
    assert accuracy >= 0.8, (accuracy, sorted(set((w, f) for w, f in zip(wanted, found) if w != f)))
    for colour in COLOURS:  # every colour gets drawn, not a few colours for everything
        assert found.count(colour) >= 2, (colour, found.count(colour))
