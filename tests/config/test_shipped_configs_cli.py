"""Every shipped config passes `--validate` and `--dry-run` as a user runs them (data folder given by --set),
offline, and says where its base model comes from."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CONFIGS = sorted((REPO / "train_configs").glob("*.toml"))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Four captioned 256 px images: large enough for every config's resolution (SDXL 1024: a quarter is 256)."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("data")
    for i in range(4):
        Image.new("RGB", (256, 256), (60 * i, 90, 200 - 40 * i)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"a picture number {i}")
    return folder


def run_cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "sd_lora", *args], cwd=cwd, capture_output=True, text=True, env=env)


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_validate_and_dry_run(tmp_path, path, data):
    base = ["train", "--config", str(path), "--set", f"data.dir={data}", "--set", f"output.dir={tmp_path / 'out'}"]
    validated = run_cli(*base, "--validate", cwd=tmp_path)
    assert validated.returncode == 0, validated.stderr
    assert "config OK" in validated.stdout
    source = next(line for line in validated.stdout.splitlines() if line.startswith("model: "))
    pretrained = next(line.split("=", 1)[1].strip().strip('"') for line in validated.stdout.splitlines()
                      if line.startswith("pretrained = "))
    if pretrained.startswith("builtin:"):
        assert source == f"model: built-in model {pretrained}"
    else:  # the hub ids of the full-size configs stay hub ids: never a path next to the config file
        assert source.startswith(f"model: hub id {pretrained} (")
        assert "/" in pretrained and str(REPO) not in pretrained
    dry = run_cli(*base, "--dry-run", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    assert "Dataset plan" in dry.stdout and "4 images" in dry.stdout
    assert "Traceback" not in dry.stderr and dry.stderr.strip() == "", dry.stderr
