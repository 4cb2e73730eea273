"""SD3 / SD3.5 training end to end on a tiny MMDiT (issue 19 items 2, 4, 5): the loss falls, step 0 is the base
model, a resumed run equals an uninterrupted one, the file covers every trained module and loads for generation
mixed with another adapter, samples regenerate bit-exact, refused settings fail before any model loads twice."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from sd_lora.cli.main import main
from sd_lora.errors import SdLoraError
from sd_lora.models.encode import PromptEmbeds
from sd_lora.train.recipe import LoRARecipe, run_training
from tests.train.conftest import tiny_config, write_dataset


def _cfg(model_dir, data_dir, out, t5=True, **sections):
    train = {"max_steps": 6, "learning_rate": 2e-3, **sections.pop("train", {})}
    return tiny_config(model_dir, data_dir, out, model={"t5": t5}, train=train,
                       output={"save_precision": "fp32", **sections.pop("output", {})}, **sections)


def test_step_zero_is_the_base_model_and_the_loss_falls(tiny_sd3_dir, tiny_dataset, tmp_path):
    from diffusers import SD3Transformer2DModel

    recipe = LoRARecipe(_cfg(tiny_sd3_dir, tiny_dataset, tmp_path / "o", train={"max_steps": 40, "batch_size": 4,
                                                                                   "learning_rate": 1e-2}))
    recipe.setup()
    assert recipe.family.name == "sd3" and recipe.prediction_type == "flow"
    base = SD3Transformer2DModel.from_pretrained(str(tiny_sd3_dir), subfolder="transformer")
    from sd_lora.train.caches import latent_shape

    batch = next(iter(recipe.dataloader))
    shape = (4, *latent_shape(recipe.vae.config, batch))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([100.0, 400.0, 700.0, 950.0])
    with torch.no_grad():
        embeds = PromptEmbeds(**batch["text_embeds"])  # cached (the encoders were freed)
        ours = recipe.family.predict(recipe.denoiser, x, t, embeds, batch)
        theirs = base(hidden_states=x, timestep=t, encoder_hidden_states=embeds.hidden_states,
                      pooled_projections=embeds.pooled, return_dict=False)[0]
    assert torch.equal(ours, theirs)  # LoRA B starts at zero: the adapted model is the base model
    fixed = torch.randn(shape, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        before = recipe.compute_loss(batch, fixed, t).item()
    recipe.train()
    with torch.no_grad():
        after = recipe.compute_loss(batch, fixed, t).item()
    assert after < before * 0.9, (before, after)


def test_six_steps_equal_three_then_resume_three(tiny_sd3_dir, tiny_dataset, tmp_path):
    straight = run_training(_cfg(tiny_sd3_dir, tiny_dataset, tmp_path / "a"))
    first = run_training(_cfg(tiny_sd3_dir, tiny_dataset, tmp_path / "b", train={"max_steps": 3}))
    resumed = run_training(_cfg(tiny_sd3_dir, tiny_dataset, tmp_path / "b", train={"resume": "latest"}))
    assert first.losses + resumed.losses == straight.losses
    a, b = load_file(str(straight.adapter_path)), load_file(str(resumed.adapter_path))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # kohya's SD3 layout: q, k and v of each stream in one fused module
    assert "lora_unet_joint_blocks_0_x_block_attn_qkv.lora_down.weight" in a
    assert "lora_unet_joint_blocks_0_context_block_attn_qkv.lora_up.weight" in a


def test_text_encoder_training_adapts_both_clips_never_t5(tiny_sd3_dir, tiny_dataset, tmp_path):
    result = run_training(_cfg(tiny_sd3_dir, tiny_dataset, tmp_path / "o", network={"train_text_encoder": True},
                               train={"max_steps": 2}))
    prefixes = {k.split("_text_model")[0].split("_joint")[0] for k in load_file(str(result.adapter_path))}
    assert prefixes == {"lora_unet", "lora_te1", "lora_te2"}
    assert result.coverage.complete and set(result.coverage.trained) == {"transformer", "text_encoder",
                                                                          "text_encoder_2"}


def test_without_t5_the_run_trains_and_caches_key_on_the_t5_length(tiny_sd3_dir, tiny_dataset, tmp_path):
    recipe = LoRARecipe(_cfg(tiny_sd3_dir, tiny_dataset, tmp_path / "o", t5=False,
                             data={"cache_text_encoder_outputs": True, "t5_max_length": 32}))
    recipe.setup()
    assert recipe.text_encoder_names == ["text_encoder", "text_encoder_2"]
    assert recipe.text_cache_settings["t5_max_length"] == 32
    batch = next(iter(recipe.dataloader))
    assert batch["text_embeds"]["hidden_states"].shape[1] == 77 + 32


@pytest.mark.parametrize("setting,message", [
    ({"train": {"min_snr_gamma": 5.0}}, "train.min_snr_gamma: not for Stable Diffusion 3 / 3.5"),
    ({"train": {"noise_offset": 0.05}}, "train.noise_offset: not for Stable Diffusion 3 / 3.5"),
    ({"model": {"prediction_type": "v_prediction"}}, "model.prediction_type: Stable Diffusion 3 / 3.5 predicts"),
])
def test_noise_prediction_settings_are_refused_with_the_key(tiny_sd3_dir, tiny_dataset, tmp_path, setting, message):
    sections = {k: dict(v) for k, v in setting.items()}
    cfg = _cfg(tiny_sd3_dir, tiny_dataset, tmp_path / "o", **{k: v for k, v in sections.items() if k != "model"})
    for key, value in sections.get("model", {}).items():
        setattr(cfg.model, key, value)
    with pytest.raises(SdLoraError, match=message):
        run_training(cfg)
    assert main(["train", "--config", _toml(cfg, tmp_path), "--validate"]) == 2


def _toml(cfg, tmp_path):
    from sd_lora.config.load import dump_config

    path = tmp_path / "cfg.toml"
    path.write_text(dump_config(cfg))
    return str(path)


def test_samples_regenerate_bit_exact_and_the_file_mixes_with_another(tiny_sd3_dir, tmp_path, capsys):
    data = write_dataset(tmp_path / "data", n=2)
    cfg = _cfg(tiny_sd3_dir, data, tmp_path / "out", train={"max_steps": 2},
               sample={"every_n_steps": 2, "prompts": ["a red square", "a blue square"], "steps": 3, "seed": 5,
                       "scheduler": "Euler"})
    result = run_training(cfg)
    pngs = sorted((tmp_path / "out" / "samples" / "step-000002").glob("*.png"))
    with Image.open(pngs[1]) as im:
        record = json.loads(im.text["sd-lora-recipe"])
    assert record["family"] == "sd3" and record["sampler"] == "Euler"
    assert main(["generate", "--recipe", str(pngs[1]), "--out", str(tmp_path / "again")]) == 0
    again = next((tmp_path / "again").glob("*.png"))
    assert np.array_equal(np.asarray(Image.open(pngs[1])), np.asarray(Image.open(again)))
    # a second adapter, and per-image adapters in one batch (peft's per-sample routing)
    loras = tmp_path / "loras"
    loras.mkdir()
    other = run_training(_cfg(tiny_sd3_dir, data, tmp_path / "other", train={"max_steps": 2, "seed": 9}))
    (loras / "a.safetensors").write_bytes(result.adapter_path.read_bytes())
    (loras / "b.safetensors").write_bytes(other.adapter_path.read_bytes())
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red square <lora:a:1>\na red square <lora:b:0.8>\na red square <lora:a:0.5> <lora:b:0.5>\n"
                       "a red square\n")
    assert main(["generate", "--model", str(tiny_sd3_dir), "--lora-dir", str(loras), "--prompt-file", str(prompts),
                 "--seed", "1", "--steps", "3", "--batch-size", "2", "--scheduler", "Euler",
                 "--out", str(tmp_path / "mix")]) == 0
    images = [np.asarray(Image.open(p)) for p in sorted((tmp_path / "mix").glob("0*.png"))]
    assert len(images) == 4 and len({im.tobytes() for im in images}) == 4
    with Image.open(sorted((tmp_path / "mix").glob("0*.png"))[2]) as im:
        assert "<lora:a:0.5> <lora:b:0.5>" in im.text["parameters"] and "Lora hashes" in im.text["parameters"]


def test_buckets_validation_ema_and_masked_loss_work_on_sd3(tiny_sd3_dir, tmp_path):
    """What SDXL runs with works on SD3: non-square buckets, a validation loss with fixed noise (deterministic),
    EMA weights in the file, a masked loss from mask files."""
    from PIL import Image as PILImage

    data = write_dataset(tmp_path / "data", n=6, size=48)
    for i in range(0, 6, 2):  # two aspect ratios
        PILImage.open(data / f"img{i}.png").resize((64, 32)).save(data / f"img{i}.png")
    masks = tmp_path / "masks"
    masks.mkdir()
    for i in range(6):
        PILImage.new("L", (8, 8), 255 if i % 3 else 0).save(masks / f"img{i}.png")
    cfg = _cfg(tiny_sd3_dir, data, tmp_path / "o", train={"max_steps": 4, "batch_size": 1, "ema_decay": 0.9},
               data={"enable_bucket": True, "min_bucket_reso": 16, "max_bucket_reso": 64, "bucket_reso_steps": 16,
                     "validation_split": 0.34, "validation_every_n_steps": 2, "mask_dir": str(masks)})
    recipe = LoRARecipe(cfg)
    try:
        recipe.setup()
        shapes = {tuple(b["latents"].shape[-2:]) if "latents" in b else tuple(b["pixel_values"].shape[-2:])
                  for b in recipe.dataloader}
        assert len(shapes) >= 2  # the buckets reach the transformer as they are
        recipe.train()
        assert [s for s, _ in recipe.validation_losses] == [2, 4]
        again = recipe.validation_loss()
        assert again == recipe.validation_loss() and np.isfinite(again)
        result = recipe.save()
    finally:
        recipe.cleanup()
    assert result.coverage.complete
    from safetensors import safe_open

    with safe_open(str(result.adapter_path), "pt") as f:
        assert f.metadata()["sd_lora.exported_weights"] == "ema"
