"""The memory estimate (sd_lora.train.memory_estimate / memory_plan): the activation trace against what autograd
really saves on the CPU, the arithmetic of the parts, gradient_checkpointing = "auto", and --dry-run's lines."""

import json
import subprocess
import sys

import pytest
import torch

from sd_lora.train import memory_plan
from sd_lora.train.memory_estimate import (ActivationFigure, checkpointing_decision, estimate_memory,
                                           unet_activations)

GiB = 2**30


def _tiny_unet_config(tiny_sd1_dir) -> dict:
    return json.loads((tiny_sd1_dir / "unet" / "config.json").read_text())


def _lora(model):
    from peft import LoraConfig, inject_adapter_in_model

    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]), model)


def _measured_saved_bytes(config: dict, hw: int, batch: int) -> int:
    """What autograd really keeps for backward in a CPU forward of the same model (each storage once)."""
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(config)
    unet.requires_grad_(False)
    _lora(unet)
    params = {p.untyped_storage().data_ptr() for p in unet.parameters()}
    held = []
    seen = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            seen[s.data_ptr()] = s.nbytes()
            held.append(s)
        return t

    x = torch.randn(batch, unet.config.in_channels, hw, hw)
    context = torch.randn(batch, 77, unet.config.cross_attention_dim)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        unet(x, torch.tensor([10] * batch), context).sample.sum().backward()
    return sum(seen.values())


@pytest.mark.parametrize("hw, batch", [(4, 2), (16, 2), (32, 1)])
def test_the_meta_trace_matches_what_autograd_saves_on_the_cpu(tiny_sd1_dir, hw, batch):
    config = _tiny_unet_config(tiny_sd1_dir)
    figure = unet_activations(config, (hw, hw), batch, torch.float32, False, _lora)
    real = _measured_saved_bytes(config, hw, batch)
    # measured: the trace is 0-5 % above (it counts a few attention inputs the CPU kernel keeps as shared views)
    assert real <= figure.saved <= 1.08 * real


def test_checkpointing_keeps_less_and_precision_halves_it(tiny_sd1_dir):
    config = _tiny_unet_config(tiny_sd1_dir)
    full = unet_activations(config, (32, 32), 2, torch.float32, False, _lora)
    ckpt = unet_activations(config, (32, 32), 2, torch.float32, True, _lora)
    half = unet_activations(config, (32, 32), 2, torch.bfloat16, False, _lora)
    double = unet_activations(config, (32, 32), 4, torch.float32, False, _lora)
    assert ckpt.saved < full.saved / 2 and ckpt.transient > full.transient  # a segment comes back in backward
    assert half.saved == pytest.approx(full.saved / 2, rel=0.1)
    assert double.saved == pytest.approx(2 * full.saved, rel=0.1)
    no_adapter = unet_activations(config, (32, 32), 2, torch.float32, False, lambda m: None)
    assert no_adapter.saved == 0  # nothing requires grad: nothing is kept


def test_the_parts_add_up():
    acts = ActivationFigure(saved=100 * 2**20, transient=20 * 2**20)
    e = estimate_memory(weights_loaded=4 * GiB, weights_training=3 * GiB, adapter_params=1_000_000,
                        optimizer="adamw", activations=acts, device="cpu")
    assert (e.adapters, e.gradients, e.optimizer) == (4_000_000, 4_000_000, 8_000_000)  # fp32; AdamW: 2 moments
    assert e.training == e.overhead + 3 * GiB + 16_000_000 + 120 * 2**20
    assert e.loading == e.overhead + 4 * GiB and e.peak == e.loading
    fused = estimate_memory(4 * GiB, 3 * GiB, 1_000_000, "adamw8bit", acts, fused_backward=True, device="cuda")
    assert (fused.gradients, fused.optimizer, fused.overhead) == (0, 2_000_000, 0)


def test_auto_checkpointing_turns_on_only_when_training_would_not_fit():
    assert checkpointing_decision("auto", 2 * GiB, 8 * GiB)[0] is False
    on, why = checkpointing_decision("auto", 9 * GiB, 8 * GiB)
    assert on and "9.00 GiB" in why and "8.00 GiB free" in why
    assert checkpointing_decision(True, 1, 100) == (True, "set in the config")
    assert checkpointing_decision(False, 100, 1) == (False, "set in the config")


@pytest.mark.parametrize("free, on", [(64 * GiB, False), (1024, True)])
def test_the_recipe_resolves_auto_from_the_free_memory(tiny_sd1_dir, tiny_dataset, tmp_path, monkeypatch, capsys,
                                                       free, on):
    from sd_lora.train.recipe import LoRARecipe
    from tests.train.conftest import tiny_config

    monkeypatch.setattr(memory_plan, "free_memory", lambda device: free)
    recipe = LoRARecipe(tiny_config(tiny_sd1_dir, tiny_dataset, tmp_path / "o"))
    try:
        recipe.setup()
        assert f"memory: gradient checkpointing {'on' if on else 'off'} [auto: " in capsys.readouterr().out
        assert recipe.denoiser.is_gradient_checkpointing is on and recipe.cfg.train.gradient_checkpointing is on
        recipe.train()
        assert len(recipe.losses) == 4
    finally:
        recipe.cleanup()


def test_dry_run_prints_precision_and_the_estimate(tiny_sd1_dir, tiny_dataset, tmp_path):
    config = tmp_path / "c.toml"
    config.write_text(f'[model]\npretrained = "{tiny_sd1_dir}"\n[data]\ndir = "{tiny_dataset}"\n'
                      f'[output]\ndir = "{tmp_path / "o"}"\n[train]\nbatch_size = 2\n')
    out = subprocess.run([sys.executable, "-m", "sd_lora", "train", "--config", str(config), "--dry-run"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "precision: " in out.stdout and "[auto: " in out.stdout
    assert "Memory estimate (process RSS): peak " in out.stdout
    assert "activations" in out.stdout and "optimiser" in out.stdout
    assert "gradient checkpointing off [auto: training needs" in out.stdout
    assert not (tmp_path / "o").exists()
