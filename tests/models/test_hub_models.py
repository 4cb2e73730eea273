"""Hub ids in training, for real: a tiny pipeline written into a temporary HF cache in the hub's layout,
loaded offline through the same code a user's `org/name` takes (no mocks of the hub client)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from sd_lora.config.load import load_config
from tests.models.hub_cache import add_to_hub_cache

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "datasets_example" / "night_shapes"


@pytest.fixture(scope="module")
def hf_home(tmp_path_factory, tiny_sd1_dir, tiny_sd2_dir):
    home = tmp_path_factory.mktemp("hf_home")
    add_to_hub_cache(home, "tiny-org/tiny-sd", tiny_sd1_dir)                  # main: SD1, epsilon
    add_to_hub_cache(home, "tiny-org/tiny-sd", tiny_sd2_dir, branch="v-pred")  # a branch holding SD2, v-prediction
    return home


def run_cli(*args, cwd, hf_home):
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run([sys.executable, "-m", "sd_lora", *args], cwd=cwd, capture_output=True, text=True, env=env)


def _train_args(out: Path, *extra: str) -> list[str]:
    return ["train", "--set", f"data.dir={DATA}", "--set", "data.resolution=32", "--set", "train.max_steps=2",
            "--set", f"output.dir={out}", "--set", "output.name=hub", "--set", "network.rank=2",
            "--set", "output.log_with=none", "--set", "output.save_state_at_end=false", *extra]


def test_trains_from_a_cached_hub_id_offline_with_text_encoder_lora(tmp_path, hf_home):
    from safetensors import safe_open

    done = run_cli(*_train_args(tmp_path / "out", "--set", "model.pretrained=tiny-org/tiny-sd",
                                "--set", "network.train_text_encoder=true"), cwd=tmp_path, hf_home=hf_home)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "hub id tiny-org/tiny-sd" in done.stdout
    with safe_open(str(tmp_path / "out" / "hub.safetensors"), "pt") as f:
        keys = list(f.keys())
        meta = f.metadata()
    assert any(k.startswith("lora_unet_") for k in keys) and any(k.startswith("lora_te_") for k in keys)
    assert meta["ss_base_model_version"].startswith("sd_v1")


def test_revision_is_honoured(tmp_path, hf_home):
    done = run_cli(*_train_args(tmp_path / "out", "--set", "model.pretrained=tiny-org/tiny-sd",
                                "--set", "model.revision=v-pred"), cwd=tmp_path, hf_home=hf_home)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sd2" in done.stdout and "v_prediction" in done.stdout


def test_a_hub_id_that_is_not_cached_is_one_clear_error_offline(tmp_path, hf_home):
    done = run_cli(*_train_args(tmp_path / "out", "--set", "model.pretrained=nobody/not-here"), cwd=tmp_path,
                   hf_home=hf_home)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr
    assert "'nobody/not-here' is not in the Hugging Face cache" in done.stderr
    assert "hf download nobody/not-here" in done.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").glob("*.safetensors"))


def test_validate_reports_the_resolved_source(tmp_path, hf_home):
    cached = run_cli("train", "--set", "model.pretrained=tiny-org/tiny-sd", "--validate", cwd=tmp_path, hf_home=hf_home)
    assert cached.returncode == 0, cached.stderr
    assert "model: hub id tiny-org/tiny-sd (cached in" in cached.stdout
    missing = run_cli("train", "--set", "model.pretrained=nobody/not-here", "--validate", cwd=tmp_path, hf_home=hf_home)
    assert "model: hub id nobody/not-here (not cached, and HF_HUB_OFFLINE=1 forbids downloading it)" in missing.stdout
    folder = run_cli("train", "--set", f"model.pretrained={tmp_path}", "--validate", cwd=tmp_path, hf_home=hf_home)
    assert folder.returncode == 2 and "no model_index.json" in folder.stderr


def test_hub_id_in_a_config_file_is_not_turned_into_a_path(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[model]\npretrained = "stable-diffusion-v1-5/stable-diffusion-v1-5"\n'
                      '[data]\ndir = "sub/imgs"\n')
    cfg = load_config(config)
    assert cfg.model.pretrained == "stable-diffusion-v1-5/stable-diffusion-v1-5"
    assert cfg.data.dir == str(tmp_path / "sub" / "imgs")  # ordinary paths still resolve against the file's folder


@pytest.mark.parametrize("value,is_path", [
    ("org/name", False), ("name", False), ("./org/name", True), ("/abs/model", True), ("~/model", True),
    ("model.safetensors", True), ("sub/model.ckpt", True), ("a/b/c", True), ("builtin:tiny", False),
])
def test_what_counts_as_a_path(tmp_path, value, is_path):
    from sd_lora.config.sources import looks_like_path

    assert looks_like_path(value, tmp_path) is is_path


def test_an_existing_folder_named_like_a_hub_id_is_a_path(tmp_path):
    from sd_lora.config.sources import looks_like_path

    (tmp_path / "org" / "name").mkdir(parents=True)
    assert looks_like_path("org/name", tmp_path)


def test_missing_component_folder_is_named(tmp_path, tiny_sd1_dir):
    import shutil

    from sd_lora.errors import SdLoraError
    from sd_lora.models.load import load_pipeline

    broken = tmp_path / "broken"
    shutil.copytree(tiny_sd1_dir, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(SdLoraError, match=r"lists vae in model_index.json but has no vae/ folder"):
        load_pipeline(str(broken))
