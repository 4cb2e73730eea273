import pytest
import torch

from sd_lora.errors import SdLoraError
from sd_lora.train.recipe import LoRARecipe, run_training
from tests.train.conftest import tiny_config


def _fixed_batch_losses(recipe, steps):
    batch = next(iter(recipe.dataloader))
    losses = []
    for _ in range(steps):
        recipe.generator.manual_seed(0)  # same noise and timesteps every step: a pure overfitting problem
        losses.append(recipe.train_step(batch))
    return losses


@pytest.mark.parametrize("train_te", [False, True])
def test_overfits_one_fixed_batch(tiny_sd1_dir, tiny_dataset, tmp_path, train_te):
    cfg = tiny_config(tiny_sd1_dir, tiny_dataset, tmp_path / "out",
                      network={"train_text_encoder": train_te, "rank": 8, "alpha": 8.0},
                      train={"learning_rate": 1e-2})
    recipe = LoRARecipe(cfg)
    recipe.setup()
    losses = _fixed_batch_losses(recipe, 40)
    assert losses[-1] < 0.6 * losses[0], losses  # well below the start (random base: ~1.0)
    te_trainable = [p for p in recipe.text_encoders[0].parameters() if p.requires_grad]
    assert bool(te_trainable) == train_te


def test_same_seed_same_losses(tiny_sd1_dir, tiny_dataset, tmp_path):
    runs = []
    for i in range(2):
        recipe = LoRARecipe(tiny_config(tiny_sd1_dir, tiny_dataset, tmp_path / f"out{i}"))
        recipe.setup()
        recipe.train()
        runs.append(recipe.losses)
    assert len(runs[0]) == 4 and runs[0] == runs[1]


def test_v_prediction_target_used_for_sd2(tiny_sd2_dir, tiny_dataset, tmp_path):
    recipe = LoRARecipe(tiny_config(tiny_sd2_dir, tiny_dataset, tmp_path / "out"))
    recipe.setup()
    assert recipe.prediction_type == "v_prediction"
    batch = next(iter(recipe.dataloader))
    recipe.generator.manual_seed(0)
    loss_v = recipe.compute_loss(batch).item()
    recipe.objective.prediction_type = "epsilon"
    recipe.generator.manual_seed(0)
    assert recipe.compute_loss(batch).item() != loss_v


def test_gradient_accumulation_steps_optimiser_less_often(tiny_sd1_dir, tiny_dataset, tmp_path):
    cfg = tiny_config(tiny_sd1_dir, tiny_dataset, tmp_path / "out",
                      train={"gradient_accumulation_steps": 2, "max_steps": 2, "batch_size": 1})
    recipe = LoRARecipe(cfg)
    recipe.setup()
    calls = []
    original = recipe.optimizer.optimizer.step
    recipe.optimizer.optimizer.step = lambda *a, **k: (calls.append(1), original(*a, **k))[1]
    recipe.train()
    assert recipe.global_step == 2 and len(calls) == 2 and len(recipe.losses) == 2


def test_xformers_requested_but_missing(tiny_sd1_dir, tiny_dataset, tmp_path, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "xformers" else real(name, *a))
    recipe = LoRARecipe(tiny_config(tiny_sd1_dir, tiny_dataset, tmp_path / "out", train={"attention": "xformers"}))
    with pytest.raises(SdLoraError, match="xformers is not installed"):
        recipe.setup()


def test_model_path_that_is_not_a_model(tiny_dataset, tmp_path):
    not_model = tmp_path / "not_a_model"
    not_model.mkdir()
    with pytest.raises(SdLoraError, match="not a diffusers model"):
        run_training(tiny_config(not_model, tiny_dataset, tmp_path / "out"))


def test_empty_dataset_fails_before_model_loads(tiny_sd1_dir, tmp_path, monkeypatch):
    import sd_lora.train.recipe as recipe_mod

    def boom(*a, **k):
        raise AssertionError("model loaded before the data was checked")

    monkeypatch.setattr(recipe_mod, "load_pipeline", boom)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SdLoraError):
        run_training(tiny_config(tiny_sd1_dir, tmp_path / "empty", tmp_path / "out"))


def test_quantize_without_cuda_is_a_clear_error(tiny_sd1_dir, tiny_dataset, tmp_path):
    recipe = LoRARecipe(tiny_config(tiny_sd1_dir, tiny_dataset, tmp_path / "out", model={"quantize": "nf4"}))
    with pytest.raises(SdLoraError, match="model.quantize = 'nf4'"):
        recipe.setup()


def test_tensorboard_logs_loss_and_learning_rates(tiny_sd1_dir, tiny_dataset, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = LoRARecipe(tiny_config(tiny_sd1_dir, tiny_dataset, tmp_path / "out",
                                    output={"log_with": "tensorboard"}, train={"max_steps": 3}))
    recipe.setup()
    recipe.train()
    recipe.cleanup()
    events = list((tmp_path / "out" / "logs").rglob("events.out.tfevents.*"))
    assert events
    acc = EventAccumulator(str(events[0].parent))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    assert {"loss", "lr/unet", "steps_per_second"} <= set(tags)
    assert [e.value for e in acc.Scalars("loss")] == pytest.approx(recipe.losses)


def test_max_epochs_sets_the_step_count(tiny_sd1_dir, tiny_dataset, tmp_path):
    # 4 images, batch 2 -> 2 steps per epoch
    recipe = LoRARecipe(tiny_config(tiny_sd1_dir, tiny_dataset, tmp_path / "out", train={"max_epochs": 3}))
    recipe.setup()
    recipe.train()
    assert recipe.global_step == 6 and recipe.state.epoch == 3


def test_timestep_range_and_zero_terminal_snr(tiny_sd1_dir, tiny_dataset, tmp_path, monkeypatch):
    import sd_lora.train.loss as loss_mod

    cfg = tiny_config(tiny_sd1_dir, tiny_dataset, tmp_path / "out",
                      train={"min_timestep": 900, "max_timestep": 1000, "zero_terminal_snr": True})
    recipe = LoRARecipe(cfg)
    recipe.setup()
    assert recipe.objective.scheduler.alphas_cumprod[-1].item() < 1e-6  # rescaled: pure noise at the last step
    seen = []
    real = loss_mod.sample_timesteps
    monkeypatch.setattr(loss_mod, "sample_timesteps", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    recipe.compute_loss(next(iter(recipe.dataloader)))
    assert seen and all(900 <= t < 1000 for t in seen[0].tolist())
