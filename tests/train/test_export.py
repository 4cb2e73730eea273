"""End to end: train on the tiny models, export, load the file elsewhere, same images."""

import json

import pytest
import torch
from safetensors import safe_open

from sd_lora.models.load import load_pipeline
from sd_lora.train.recipe import run_training
from tests.train.conftest import tiny_config


def _image(pipe):
    return pipe("a red square", num_inference_steps=3, height=32, width=32, output_type="np",
                generator=torch.Generator().manual_seed(3)).images


def _trained_image(cfg):
    """Train, then render with the in-memory adapted model (fresh recipe objects are discarded)."""
    from sd_lora.train.memory import restore_encoders
    from sd_lora.train.recipe import LoRARecipe

    recipe = LoRARecipe(cfg)
    recipe.setup()
    recipe.train()
    result = recipe.save()
    recipe.denoiser.eval()
    recipe.restore_encoders()  # with every latent cached the VAE was freed for training; reload it to render
    return result, _image(recipe.pipeline)


@pytest.mark.parametrize("family,train_te", [("sd1", True), ("sd2", False)])
def test_exported_file_loads_in_diffusers_with_the_same_image(request, tiny_dataset, tmp_path, family, train_te):
    model_dir = request.getfixturevalue(f"tiny_{family}_dir")
    cfg = tiny_config(model_dir, tiny_dataset, tmp_path / "out", network={"train_text_encoder": train_te},
                      train={"learning_rate": 5e-2}, output={"save_precision": "fp32"})
    result, trained = _trained_image(cfg)
    assert result.adapter_path.is_file() and result.config_path.is_file()
    with safe_open(str(result.adapter_path), "pt") as f:
        keys, meta = set(f.keys()), f.metadata()
    assert all(k.startswith(("lora_unet_", "lora_te_")) for k in keys)
    assert any(k.startswith("lora_te_text_model_encoder_layers_") for k in keys) == train_te
    assert meta["ss_network_dim"] == "4" and meta["ss_base_model_version"] == ("sd_v1" if family == "sd1" else "sd_v2_v")
    assert json.loads(meta["ss_tag_frequency"])  # valid JSON with integer counts
    assert result.coverage.complete

    pipe, _ = load_pipeline(str(model_dir))
    base = _image(pipe)
    pipe.load_lora_weights(str(result.adapter_path))
    loaded = _image(pipe)
    assert abs(loaded - trained).max() < 1e-4
    assert abs(loaded - base).max() > 1e-3  # training really changed something


def test_resolved_config_is_written_and_reloads(tiny_sd1_dir, tiny_dataset, tmp_path):
    from sd_lora.config.load import load_config

    import dataclasses

    from sd_lora.train.precision import with_resolved_precision

    cfg = tiny_config(tiny_sd1_dir, tiny_dataset, tmp_path / "out", train={"max_steps": 1})
    result = run_training(cfg)
    written = load_config(result.config_path)
    # the 'auto' choices are written as what ran (this machine's precision; no checkpointing for a tiny model)
    ran = with_resolved_precision(cfg)[0].train.mixed_precision
    assert (written.train.mixed_precision, written.train.gradient_checkpointing) == (ran, False)
    assert written == dataclasses.replace(cfg, train=dataclasses.replace(
        cfg.train, mixed_precision=ran, gradient_checkpointing=False))
