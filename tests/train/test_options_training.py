"""Optimisers (lion, schedule-free, CAME), EMA and class-image settings (issue 15 items 7, 8, 11)."""

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from sd_lora.train.ema import AdapterEMA
from sd_lora.train.optim import set_optimizer_mode
from tests.train.conftest import tiny_config, write_dataset


def _run(cfg):
    from sd_lora.train.recipe import LoRARecipe

    recipe = LoRARecipe(cfg)
    try:
        recipe.setup()
        recipe.train()
        result = recipe.save()
    finally:
        recipe.cleanup()
    return recipe, result


def _up_weights(path):
    return {k: v for k, v in load_file(str(path)).items() if k.endswith("lora_up.weight")}


@pytest.mark.parametrize("name", ["lion", "adamw_schedulefree", "came"])
def test_optimizer_trains_a_few_steps(name, tiny_sd1_dir, tmp_path):
    data = write_dataset(tmp_path / "data", n=2)
    recipe, result = _run(tiny_config(tiny_sd1_dir, data, tmp_path / "out", train={"optimizer": name, "max_steps": 3}))
    inner = getattr(recipe.optimizer, "optimizer", recipe.optimizer)
    assert type(inner).__name__ == {"lion": "Lion", "adamw_schedulefree": "AdamWScheduleFree", "came": "CAME"}[name]
    assert len(result.losses) == 3 and all(torch.isfinite(torch.tensor(result.losses)))
    ups = _up_weights(result.adapter_path)
    assert ups and any(v.abs().max() > 0 for v in ups.values())  # B starts at zero: the optimiser moved it
    with safe_open(str(result.adapter_path), "pt") as f:
        assert f.metadata()["ss_optimizer"] == {"lion": "lion_pytorch.lion_pytorch.Lion",  # kohya's form: the class
                                                "adamw_schedulefree": "schedulefree.adamw_schedulefree.AdamWScheduleFree",
                                                "came": "came_pytorch.CAME.CAME"}[name]


def test_schedulefree_modes_around_saving(tiny_sd1_dir, tmp_path):
    """The exported file holds the eval-mode (averaged) weights, not the train-mode interpolation."""
    data = write_dataset(tmp_path / "data", n=2)
    recipe, result = _run(tiny_config(tiny_sd1_dir, data, tmp_path / "out", output={"save_precision": "fp32"},
                                      train={"optimizer": "adamw_schedulefree", "max_steps": 3}))
    saved = [float(v.abs().sum()) for v in load_file(str(result.adapter_path)).values() if v.ndim > 0]
    params = [p for g in recipe.optimizer.param_groups for p in g["params"]]
    eval_values = [float(p.detach().abs().sum()) for p in params]  # the run ended in eval mode
    set_optimizer_mode(recipe.optimizer, True)
    train_values = [float(p.detach().abs().sum()) for p in params]
    set_optimizer_mode(recipe.optimizer, False)

    def in_file(value):
        return min(abs(value - s) for s in saved) < 1e-5 * max(1.0, value)

    assert eval_values != train_values
    assert all(in_file(v) for v in eval_values)
    assert not all(in_file(v) for v in train_values)


def test_ema_by_hand():
    p = torch.nn.Parameter(torch.zeros(2))
    ema = AdapterEMA([p], 0.5)
    with torch.no_grad():
        p.fill_(1.0)
    ema.update()  # 0.5 * 0 + 0.5 * 1
    with torch.no_grad():
        p.fill_(3.0)
    ema.update()  # 0.5 * 0.5 + 0.5 * 3
    with ema.applied():
        assert torch.equal(p.detach(), torch.full((2,), 1.75))
    assert torch.equal(p.detach(), torch.full((2,), 3.0))
    again = AdapterEMA([p], 0.5)
    again.load_state_dict(ema.state_dict())
    assert torch.equal(again.shadow[0], torch.full((2,), 1.75))


def test_ema_run_exports_the_average_and_saves_it_with_the_state(tiny_sd1_dir, tmp_path):
    data = write_dataset(tmp_path / "data", n=2)
    recipe, result = _run(tiny_config(tiny_sd1_dir, data, tmp_path / "out", train={"ema_decay": 0.9, "max_steps": 3},
                                      output={"save_precision": "fp32"}))
    params = [p for g in recipe.optimizer.param_groups for p in g["params"]]
    saved = sorted(float(v.abs().sum()) for v in load_file(str(result.adapter_path)).values() if v.ndim > 0)
    shadow = sorted(float(s.abs().sum()) for s in recipe.ema.shadow)
    trained = sorted(float(p.detach().abs().sum()) for p in params)
    assert shadow != trained
    for value in shadow:  # every EMA tensor is in the file (alphas are extra scalars)
        assert min(abs(value - s) for s in saved) < 1e-4 * max(1.0, value)
    with safe_open(str(result.adapter_path), "pt") as f:
        meta = f.metadata()
    assert meta["sd_lora.exported_weights"] == "ema" and float(meta["sd_lora.ema_decay"]) == 0.9
    state = next((tmp_path / "out" / "checkpoints").glob("step-*"))
    stored = [torch.load(f, weights_only=False) for f in state.glob("custom_checkpoint_*.pkl")]
    emas = [s for s in stored if isinstance(s, dict) and "shadow" in s]
    assert emas and all(torch.equal(a, b.cpu()) for a, b in zip(emas[0]["shadow"], recipe.ema.shadow))


def test_class_images_use_the_configured_steps_and_scheduler(tiny_sd1_dir, tmp_path, monkeypatch):
    from sd_lora.models.load import load_pipeline
    from sd_lora.train.samples import class_image_generator

    pipe = load_pipeline(str(tiny_sd1_dir))[0]
    seen = {}
    original = type(pipe).__call__

    def spy(self, *args, **kwargs):
        seen["steps"], seen["scheduler"] = kwargs["num_inference_steps"], type(self.scheduler).__name__
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(pipe), "__call__", spy)
    before = pipe.scheduler
    images = class_image_generator(pipe, 32, steps=3, scheduler="DDIM")(["a dog"], [0])
    assert seen == {"steps": 3, "scheduler": "DDIMScheduler"} and len(images) == 1
    assert pipe.scheduler is before  # put back for the samples


def test_missing_optimizer_package_is_one_clear_error(monkeypatch):
    import importlib.util

    from sd_lora.config.load import config_from_dict
    from sd_lora.errors import SdLoraError
    from sd_lora.train.optim import build_optimizer

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: None if n == "lion_pytorch" else real(n, *a))
    cfg = config_from_dict({"train": {"optimizer": "lion"}}).train
    with pytest.raises(SdLoraError, match=r"sd-lora\[lion\]"):
        build_optimizer([{"params": [torch.nn.Parameter(torch.zeros(1))]}], cfg, torch.device("cpu"))
