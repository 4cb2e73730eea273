"""User errors end in one clear message and exit code 2, never a traceback."""

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "sd_lora", *args], cwd=cwd, capture_output=True, text=True,
                          env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"})


@pytest.mark.parametrize("args,message", [
    (["train", "--config", "missing.toml"], "config file 'missing.toml' not found"),
    (["train", "--set", "train.max_step=3"], "train.max_step: unknown key; did you mean 'max_steps'?"),
    (["train", "--set", "network.rank=0", "--set", "train.learning_rate=-1.0"], "network.rank: must be at least 1"),
    (["train", "--set", "data.dir=nowhere", "--set", "model.pretrained=builtin:tiny"], "nowhere"),
    (["train", "--set", "oops"], "expected section.key=value"),
])
def test_user_errors_are_one_clean_message(tmp_path, args, message):
    done = run_cli(*args, cwd=tmp_path)
    assert done.returncode == 2, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith("sd-lora train: error:")


def test_all_config_problems_listed_in_one_run(tmp_path):
    done = run_cli("train", "--set", "network.rank=0", "--set", "train.learning_rate=-1.0", cwd=tmp_path)
    assert "network.rank" in done.stderr and "train.learning_rate" in done.stderr


def test_validate_prints_the_resolved_config(tmp_path):
    done = run_cli("train", "--set", "train.max_steps=7", "--validate", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "max_steps = 7" in done.stdout and "config OK" in done.stdout
