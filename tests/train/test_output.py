"""What a person sees: a training run's output (no library noise, one line per log step when not on a terminal,
the plan before the model loads), the loss history it leaves, and files other users' services can read."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "datasets_example" / "night_shapes"


def _train(tmp_path: Path, *extra: str, umask: int = 0o022):
    data = tmp_path / "data"
    if not data.exists():
        shutil.copytree(DATA, data)
        (data / "broken.png").write_bytes(b"not a png at all")
    args = ["train", "--set", f"data.dir={data}", "--set", "data.resolution=32", "--set", "train.max_steps=6",
            "--set", "train.batch_size=4", "--set", "train.log_every_n_steps=2", "--set", "network.rank=2",
            "--set", f"output.dir={tmp_path / 'out'}", "--set", "output.log_with=none",
            "--set", "data.cache_latents=true", "--set", "data.validation_split=0.25",
            "--set", "data.validation_every_n_steps=3", "--set", "output.save_every_n_steps=3",
            "--set", "sample.every_n_steps=3", "--set", "sample.prompts=['a red circle']", "--set", "sample.steps=2",
            *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    for name in ("SD_LORA_VERBOSE", "DIFFUSERS_VERBOSITY", "TRANSFORMERS_VERBOSITY"):
        env.pop(name, None)  # the test session quiets these; a user's shell does not
    return subprocess.run([sys.executable, "-m", "sd_lora", *args], capture_output=True, text=True, env=env,
                          cwd=tmp_path, preexec_fn=lambda: os.umask(umask))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("run")
    done = _train(tmp)
    assert done.returncode == 0, done.stderr[-3000:]
    return tmp, done


def test_output_is_plain_lines_without_library_noise(run):
    _, done = run
    assert "\r" not in done.stdout + done.stderr
    for noise in ("Warning", "warn(", "Loading pipeline components", "Loading weights", "kept in float32",
                  "torchvision", "Already found a `peft_config`", "No LoRA keys", "CacheStats("):
        assert noise not in done.stdout + done.stderr, noise
    progress = [line for line in done.stdout.splitlines() if line.startswith("step ") and "/6" in line]
    assert [line.split()[1] for line in progress] == ["2/6", "4/6", "6/6"]
    assert all(" loss " in line and " lr " in line and "s/step" in line and "ETA" in line for line in progress)


def test_plan_comes_before_the_model_and_messages_read_as_sentences(run):
    _, done = run
    out = done.stdout
    assert out.index("Dataset plan") < out.index("model: built-in model builtin:tiny") < out.index("step 2/6")
    assert "model: family sd1, epsilon prediction" in out
    assert "latent cache: 24 image(s) encoded, 0 reused from the disk cache" in out
    saved = [line for line in out.splitlines() if "saved" in line]
    assert saved and all(line.count("saved") == 1 for line in saved), saved


def test_each_dataset_warning_is_printed_once(run):
    _, done = run
    both = done.stdout + done.stderr
    assert both.count("broken.png") == 1, both


def test_metrics_jsonl_holds_every_logged_step_and_validation(run):
    tmp, _ = run
    lines = [json.loads(line) for line in (tmp / "out" / "logs" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if "loss" in r]
    assert [r["step"] for r in steps] == [2, 4, 6]
    for r in steps:
        assert r["loss"] > 0 and r["grad_norm"] >= 0 and r["s_per_step"] > 0 and set(r["lr"]) == {"unet"}
    assert [r["step"] for r in lines if "validation_loss" in r] == [3, 6]


def test_files_get_the_umask_modes(run):
    tmp, _ = run
    out = tmp / "out"
    files = [p for p in out.rglob("*") if p.is_file()]
    names = {p.name for p in files}
    assert {"lora.safetensors", "lora-step000003.safetensors", "lora.config.toml", "metrics.jsonl"} <= names
    assert any(p.suffix == ".png" for p in files) and any("checkpoints" in p.parts for p in files)
    wrong = {str(p.relative_to(out)): oct(stat.S_IMODE(p.stat().st_mode)) for p in files
             if stat.S_IMODE(p.stat().st_mode) != 0o644}
    assert not wrong
    dirs = [p for p in out.rglob("*") if p.is_dir()]
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o755 for p in dirs)


def test_verbose_shows_the_library_messages_again(tmp_path):
    done = _train(tmp_path, "--set", "train.max_steps=1", "--set", "output.save_every_n_steps=0",
                  "--set", "sample.every_n_steps=0", "--verbose")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Loading pipeline components" in done.stderr
