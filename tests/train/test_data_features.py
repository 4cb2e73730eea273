"""The recipe with the data pipeline's caches, validation split and plan."""

import pytest

from sd_lora.train.recipe import LoRARecipe
from tests.train.conftest import tiny_config, write_dataset


def _losses(cfg):
    recipe = LoRARecipe(cfg)
    recipe.setup()
    recipe.train()
    return recipe


def test_caches_give_the_same_loss_sequence(tiny_sd1_dir, tiny_dataset, tmp_path):
    plain = _losses(tiny_config(tiny_sd1_dir, tiny_dataset, tmp_path / "a",  # caches are on by default ("auto")
                                data={"cache_latents": False, "cache_text_encoder_outputs": False}))
    assert "pixel_values" in next(iter(plain.dataloader))
    cached = _losses(tiny_config(tiny_sd1_dir, tiny_dataset, tmp_path / "b",
                                 data={"cache_latents": True, "cache_text_encoder_outputs": True}))
    assert cached.losses == pytest.approx(plain.losses, rel=1e-5, abs=1e-6)
    batch = next(iter(cached.dataloader))
    assert "latents" in batch and "pixel_values" not in batch and "text_embeds" in batch


def test_text_cache_refused_with_reason_when_text_encoder_trains(tiny_sd1_dir, tiny_dataset, tmp_path, capsys):
    recipe = LoRARecipe(tiny_config(tiny_sd1_dir, tiny_dataset, tmp_path / "a",
                                    data={"cache_text_encoder_outputs": True},
                                    network={"train_text_encoder": True}))
    recipe.setup()
    assert "text-encoder outputs are not cached: the text encoder is being trained" in capsys.readouterr().out
    assert "text_embeds" not in next(iter(recipe.dataloader))


def test_validation_loss_is_deterministic_and_logged(tiny_sd1_dir, tmp_path):
    data = write_dataset(tmp_path / "data", n=8)
    recipe = _losses(tiny_config(tiny_sd1_dir, data, tmp_path / "o",
                                 data={"validation_split": 0.25, "validation_every_n_steps": 2}))
    steps = [s for s, _ in recipe.validation_losses]
    assert steps == [2, 4]
    again = recipe.validation_loss()
    assert again == recipe.validation_loss()  # fixed noise and timesteps: same model, same number
    assert again == pytest.approx(recipe.validation_losses[-1][1])


def test_dry_run_prints_the_plan_without_loading_a_model(tiny_sd1_dir, tmp_path, monkeypatch, capsys):
    import sd_lora.models.load as load_mod
    from sd_lora.cli.main import main

    monkeypatch.setattr(load_mod, "load_pipeline", lambda *a, **k: pytest.fail("dry run loaded a model"))
    data = write_dataset(tmp_path / "data", n=6)
    rc = main(["train", "--set", f"data.dir={data}", "--set", "data.resolution=32", "--set", "train.batch_size=2",
               "--set", "train.max_steps=9", "--set", f"model.pretrained={tiny_sd1_dir}", "--dry-run"])
    out = capsys.readouterr().out
    assert rc == 0
    # 6 images x 1 repeat, batch 2 -> 3 batches per epoch; 9 steps -> 3 epochs
    assert "6 images x 1 repeats = 6 samples" in out and "9 steps = 3 epoch(s)" in out


def test_sample_grids_rendered_during_and_after_training(tiny_sd1_dir, tiny_dataset, tmp_path):
    from PIL import Image

    from sd_lora.train.recipe import run_training

    run_training(tiny_config(tiny_sd1_dir, tiny_dataset, tmp_path / "o",
                             sample={"every_n_steps": 2, "prompts": ["a red square", "a blue square"], "steps": 2,
                                     "scheduler": "DDIM"}))
    grids = sorted(p.name for p in (tmp_path / "o" / "samples").glob("*.png"))
    assert grids == ["step000002.png", "step000004.png"]
    first, last = (Image.open(tmp_path / "o" / "samples" / g) for g in grids)
    assert first.size == last.size and first.size[0] >= 2 * 32  # two 32 px samples side by side, labelled
