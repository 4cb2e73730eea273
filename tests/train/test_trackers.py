"""Experiment trackers through accelerate: TensorBoard and wandb get the loss, learning rates and sample grids."""

import importlib.util
import pytest

from sd_lora.errors import SdLoraError
from sd_lora.train.recipe import LoRARecipe, run_training
from tests.train.conftest import tiny_config

SAMPLES = {"every_n_steps": 2, "prompts": ["a red square"], "steps": 2, "scheduler": "DDIM"}


def test_tensorboard_gets_the_sample_grids(tiny_sd1_dir, tiny_dataset, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

    run_training(tiny_config(tiny_sd1_dir, tiny_dataset, tmp_path / "out", output={"log_with": "tensorboard"},
                             sample=SAMPLES))
    events = list((tmp_path / "out" / "logs").rglob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events[0].parent), size_guidance={IMAGES: 0})
    acc.Reload()
    assert [e.step for e in acc.Images("samples")] == [2, 4]


def test_wandb_offline_run_gets_loss_lr_and_sample_grids(tiny_sd1_dir, tiny_dataset, tmp_path, monkeypatch):
    if importlib.util.find_spec("wandb") is None:
        pytest.fail("wandb is part of the dev extra; install it with pip install -e '.[dev]'")
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    logged, real_log = [], wandb.Run.log
    monkeypatch.setattr(wandb.Run, "log", lambda run, data, step=None, **kw: (
        logged.append((step, dict(data))), real_log(run, data, step=step, **kw))[1])
    result = run_training(tiny_config(tiny_sd1_dir, tiny_dataset, tmp_path / "out", output={"log_with": "wandb"},
                                      sample=SAMPLES))
    runs = list((tmp_path / "out" / "logs" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, "the wandb run folder goes under output.dir/logs"
    assert list(runs[0].glob("run-*.wandb"))
    losses = [(step, data["loss"]) for step, data in logged if "loss" in data]
    assert losses == [(i + 1, pytest.approx(loss)) for i, loss in enumerate(result.losses)]
    assert all("lr/unet" in data for _, data in logged if "loss" in data)
    assert [step for step, data in logged if "samples" in data] == [2, 4]
    media = sorted((runs[0] / "files" / "media" / "images").glob("samples_*.png"))
    assert len(media) == 2  # the grids of steps 2 and 4


def test_a_tracker_that_is_not_installed_is_a_clear_error(tiny_sd1_dir, tiny_dataset, tmp_path, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    recipe = LoRARecipe(tiny_config(tiny_sd1_dir, tiny_dataset, tmp_path / "out", output={"log_with": "wandb"}))
    with pytest.raises(SdLoraError, match=r"output.log_with = 'wandb' but wandb is not installed.*sd-lora\[wandb\]"):
        recipe.setup()
