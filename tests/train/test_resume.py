"""Exact resume, signals and NaN: training can be stopped and continued without changing the result."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sd_lora.errors import SdLoraError
from sd_lora.train.recipe import LoRARecipe, run_training
from tests.train.conftest import tiny_config

REPO = Path(__file__).resolve().parents[2]


def _cfg(model, data, out, **train):
    return tiny_config(model, data, out, train={"max_steps": 10, "learning_rate": 1e-2, **train},
                       output={"save_precision": "fp32"})


def test_ten_steps_equal_five_then_resume_five(tiny_sd1_dir, tiny_dataset, tmp_path):
    straight = run_training(_cfg(tiny_sd1_dir, tiny_dataset, tmp_path / "a"))
    first = run_training(_cfg(tiny_sd1_dir, tiny_dataset, tmp_path / "b", max_steps=5))
    assert (tmp_path / "b" / "checkpoints" / "step-000005").is_dir()
    resumed = run_training(_cfg(tiny_sd1_dir, tiny_dataset, tmp_path / "b", resume="latest"))
    assert first.losses + resumed.losses == straight.losses
    a, b = load_file(str(straight.adapter_path)), load_file(str(resumed.adapter_path))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_checkpoint_holds_only_adapter_and_optimizer_state(tiny_sd1_dir, tiny_dataset, tmp_path):
    run_training(tiny_config(tiny_sd1_dir, tiny_dataset, tmp_path / "o", train={"max_steps": 6},
                             output={"save_every_n_steps": 2, "save_last_n": 1}))
    ckpts = sorted(p.name for p in (tmp_path / "o" / "checkpoints").iterdir())
    # step 2 pruned by save_last_n = 1; step 4 kept; step 6 is the end-of-training state
    assert ckpts == ["step-000004", "step-000006"]
    assert sorted(p.name for p in (tmp_path / "o").glob("tiny-step*.safetensors")) == ["tiny-step000004.safetensors"]
    unet_bytes = sum(p.numel() * 4 for p in __import__("diffusers").UNet2DConditionModel.from_pretrained(
        str(tiny_sd1_dir), subfolder="unet").parameters())
    size = sum(f.stat().st_size for f in (tmp_path / "o" / "checkpoints" / "step-000004").rglob("*") if f.is_file())
    assert size < unet_bytes / 4  # adapter + optimiser moments, never the base model


def test_resume_latest_without_checkpoints_is_clear(tiny_sd1_dir, tiny_dataset, tmp_path):
    with pytest.raises(SdLoraError, match="holds no complete state"):
        run_training(_cfg(tiny_sd1_dir, tiny_dataset, tmp_path / "empty", resume="latest"))


def test_nan_loss_stops_and_keeps_the_last_good_adapter(tiny_sd1_dir, tiny_dataset, tmp_path):
    cfg = tiny_config(tiny_sd1_dir, tiny_dataset, tmp_path / "o", train={"max_steps": 6},
                      output={"save_every_n_steps": 2})
    recipe = LoRARecipe(cfg)
    recipe.setup()
    real = recipe.compute_loss

    def poisoned(batch):
        loss = real(batch)
        return loss * float("nan") if recipe.global_step == 3 else loss

    recipe.compute_loss = poisoned
    with pytest.raises(SdLoraError, match="loss became nan at step 4"):
        recipe.train()
    good = tmp_path / "o" / "tiny-step000002.safetensors"
    assert good.is_file() and all(torch.isfinite(t).all() for t in load_file(str(good)).values())
    assert not (tmp_path / "o" / "tiny.safetensors").exists()


def test_sigterm_saves_state_and_adapter_then_resume_finishes(tiny_sd1_dir, tiny_dataset, tmp_path):
    out = tmp_path / "o"
    args = [sys.executable, "-m", "sd_lora", "train", "--set", f"model.pretrained={tiny_sd1_dir}",
            "--set", f"data.dir={tiny_dataset}", "--set", "data.resolution=32", "--set", "network.rank=4",
            "--set", f"output.dir={out}", "--set", "output.name=sig", "--set", "train.log_every_n_steps=1",
            "--set", "output.log_with='none'"]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(args + ["--set", "train.max_steps=100000"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    seen = ""
    deadline = time.time() + 120
    while " loss " not in seen and time.time() < deadline:  # wait until steps are running (a progress line)
        seen += proc.stdout.read(1)
    assert " loss " in seen, seen
    proc.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=120)
    output = seen + rest
    assert proc.returncode == 0, output
    assert "stopped by SIGTERM" in output and "train.resume=latest" in output
    step_dirs = list((out / "checkpoints").glob("step-*"))
    assert len(step_dirs) == 1
    stopped_at = int(step_dirs[0].name.split("-")[1])
    assert (out / f"sig-step{stopped_at:06d}.safetensors").is_file()
    done = subprocess.run(args + ["--set", f"train.max_steps={stopped_at + 2}", "--set", "train.resume=latest"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"resumed from" in done.stdout + done.stderr and (out / "sig.safetensors").is_file()
