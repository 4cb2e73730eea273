"""Round 2 (A), classes 10-13 and 15: what a new user hits. `--validate` checks the model source and the optional
packages; a diffusers LoRA folder is an adapter everywhere; sizes default to the model's native resolution;
closed pipes, optimiser spelling, `ss_num_epochs`, the shipped configs' output folders, CPU threads."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.reliability.conftest import REPO, assert_ok, assert_user_error, cli_env, run_cli, write_image


def validate(tmp_path, *sets):
    return run_cli("train", *[a for s in sets for a in ("--set", s)], "--validate", cwd=tmp_path)


# ---- class 10: --validate -------------------------------------------------------------------------------------
def test_a_mistyped_local_model_path_is_not_taken_for_a_hub_id(tmp_path, tiny_models):
    shutil.copytree(tiny_models / "tiny0", tmp_path / "models" / "tiny-sd1")
    result = validate(tmp_path, "model.pretrained=models/tiny-sdx")
    assert_user_error(result, "train", "models/tiny-sdx' does not exist", "did you mean", "tiny-sd1")
    assert "config OK" not in result.stdout


def test_an_existing_local_model_folder_validates(tmp_path, tiny_models):
    shutil.copytree(tiny_models / "tiny0", tmp_path / "models" / "tiny-sd1")
    result = validate(tmp_path, "model.pretrained=models/tiny-sd1")
    assert_ok(result)
    assert f"model: diffusers folder {tmp_path / 'models' / 'tiny-sd1'}" in result.stdout


def test_a_hub_id_not_in_the_cache_is_said_to_stop_the_run_offline(tmp_path):
    result = validate(tmp_path, "model.pretrained=some-org/some-model")
    assert_ok(result)
    assert "hub id some-org/some-model (not cached, and HF_HUB_OFFLINE=1 forbids downloading it)" in result.stdout
    assert "warning: training would stop here" in result.stdout and "hf download some-org/some-model" in result.stdout


@pytest.mark.parametrize("setting,package", [("train.attention=xformers", "xformers"),
                                             ("model.quantize=nf4", "bitsandbytes"),
                                             ("train.optimizer=adamw8bit", "bitsandbytes")])
def test_validate_names_a_missing_optional_package(tmp_path, setting, package):
    result = validate(tmp_path, setting)
    assert_user_error(result, "train", setting.split("=")[0], f"but {package} is not installed", "pip install")


def test_validate_reports_every_missing_package_at_once(tmp_path):
    result = validate(tmp_path, "train.attention=xformers", "model.quantize=nf4", "output.log_with=wandb",
                      "train.optimizer=AdamW8bit")
    message = assert_user_error(result, "train", "xformers", "model.quantize", "train.optimizer = 'adamw8bit'")
    assert message.count("is not installed") >= 3  # wandb too, where the test machine lacks it


# ---- class 13: optimiser spelling, closed pipes, ss_num_epochs, shipped configs ------------------------------------
@pytest.mark.parametrize("written,canonical", [("AdamW", "adamw"), ("Prodigy", "prodigy"),
                                               ("AdamWScheduleFree", "adamw_schedulefree"), ("AdaFactor", "adafactor")])
def test_optimiser_names_are_case_insensitive(tmp_path, written, canonical):
    result = validate(tmp_path, f"train.optimizer={written}")
    assert_ok(result)
    assert f'optimizer = "{canonical}"' in result.stdout


def test_a_misspelled_optimiser_still_fails_with_a_suggestion(tmp_path):
    assert_user_error(validate(tmp_path, "train.optimizer=AdamX"), "train", "must be one of", "did you mean")


@pytest.mark.parametrize("args", [["inspect", "ADAPTER", "--json"], ["inspect", "ADAPTER"], ["train", "--help"],
                                  ["generate", "--help"]], ids=["inspect-json", "inspect", "train-help", "generate-help"])
def test_a_closed_stdout_is_no_traceback(tmp_path, adapter_files, args):
    """`sd-lora inspect X | head`: the reader goes away; the command ends quietly as a pipe writer does."""
    args = [str(adapter_files["sd1"]) if a == "ADAPTER" else a for a in args]
    proc = subprocess.Popen([sys.executable, "-m", "sd_lora", *args], cwd=tmp_path, env=cli_env(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # before it writes anything
    err = proc.stderr.read()
    proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err, err
    assert proc.returncode in (0, 141), (proc.returncode, err)


def test_ss_num_epochs_is_the_planned_epoch_count(tmp_path):
    from safetensors import safe_open

    for i in range(5):
        write_image(tmp_path / "data" / f"{i}.png", colour=(40 * i, 90, 200 - 30 * i))
    result = run_cli("train", "--set", f"data.dir={tmp_path / 'data'}", "--set", f"output.dir={tmp_path / 'out'}",
                     "--set", "output.log_with=none", "--set", "network.rank=2", "--set", "train.batch_size=1",
                     "--set", "train.max_steps=7", cwd=tmp_path)
    assert_ok(result)
    planned = re.search(r"training length: 7 steps = (\d+) epoch", result.stdout)
    assert planned and planned.group(1) == "2", result.stdout
    with safe_open(str(tmp_path / "out" / "lora.safetensors"), framework="pt") as f:
        assert f.metadata()["ss_num_epochs"] == "2"


SHIPPED = sorted((REPO / "train_configs").glob("*.toml"))


@pytest.mark.parametrize("config", SHIPPED, ids=lambda p: p.name)
def test_shipped_configs_write_outside_train_configs_into_an_ignored_folder(config):
    out = (config.parent / tomllib.loads(config.read_text())["output"]["dir"]).resolve()
    assert not out.is_relative_to(REPO / "train_configs"), out
    ignored = subprocess.run(["git", "check-ignore", "-q", str(out / "x.safetensors")], cwd=REPO)
    assert ignored.returncode == 0, f"{out} is not git-ignored"


# ---- class 11: a diffusers LoRA folder ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def diffusers_folder(tmp_path_factory):
    """What diffusers' own `save_lora_weights` writes: a folder holding pytorch_lora_weights.safetensors."""
    import torch
    from diffusers import StableDiffusionPipeline
    from peft import LoraConfig, get_peft_model_state_dict

    from sd_lora.models.load import load_pipeline

    folder = tmp_path_factory.mktemp("dlora") / "my_lora"
    pipe, _ = load_pipeline("builtin:tiny")
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    StableDiffusionPipeline.save_lora_weights(str(folder), unet_lora_layers=get_peft_model_state_dict(pipe.unet))
    assert [p.name for p in folder.iterdir()] == ["pytorch_lora_weights.safetensors"]
    return folder


@pytest.mark.parametrize("command", ["inspect", "convert", "resize", "generate", "bake"])
def test_a_diffusers_lora_folder_is_read_like_an_adapter_file(tmp_path, diffusers_folder, command):
    args = {"inspect": ["inspect", diffusers_folder],
            "convert": ["convert", diffusers_folder, "out.safetensors", "--to", "community", "--family", "sd1"],
            "resize": ["resize", diffusers_folder, "-o", "out.safetensors", "--rank", "2", "--family", "sd1"],
            "generate": ["generate", "--model", "builtin:tiny", "--lora", f"{diffusers_folder}:0.8", "--prompt", "a cat",
                         "--steps", "1", "--seed", "1", "--out", "gen"],
            "bake": ["bake", "--model", "builtin:tiny", "--lora", diffusers_folder, "-o", "out.safetensors"]}[command]
    result = run_cli(*args, cwd=tmp_path)
    assert_ok(result)
    if command == "inspect":
        assert "unet" in result.stdout and "no such file" not in result.stdout
    else:
        assert (tmp_path / ("gen" if command == "generate" else "out.safetensors")).exists()


def test_a_folder_that_is_no_adapter_is_one_clear_error(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("hi")
    assert_user_error(run_cli("inspect", "notes", cwd=tmp_path), "inspect", "neither a peft adapter folder",
                      "pytorch_lora_weights.safetensors")


# ---- class 12: sizes follow the model ----------------------------------------------------------------------------
def test_training_without_a_config_uses_the_models_native_size(tmp_path, dataset):
    result = run_cli("train", "--set", f"data.dir={dataset}", "--dry-run", cwd=tmp_path)
    assert_ok(result)
    assert "32x32: 3" in result.stdout and "too small" not in result.stdout
    assert_user_error(run_cli("train", "--set", f"data.dir={dataset}", "--set", "data.resolution=512", "--dry-run",
                              cwd=tmp_path), "train", "no usable training images")  # an explicit size is kept


def test_generate_uses_the_size_the_adapter_was_trained_at(tmp_path, adapter_files):
    """On a tiny SDXL (native 16 px here) an adapter trained at 32 px generates 32 px images; without an adapter
    the model's own size."""
    from PIL import Image
    from safetensors.torch import load_file, save_file

    lora = tmp_path / "trained32.safetensors"
    save_file(load_file(str(adapter_files["sdxl"])), str(lora),
              metadata={"ss_resolution": "(32, 32)", "ss_clip_skip": "1", "ss_base_model_version": "sdxl_base_v1-0"})
    model = str(adapter_files["sdxl_model"])
    from sd_lora.cli.main import main  # in-process: the case is about the size chosen, not the process

    assert main(["generate", "--model", model, "--lora", str(lora), "--prompt", "a cat", "--steps", "1", "--seed",
                 "1", "--out", str(tmp_path / "a")]) == 0
    assert Image.open(next((tmp_path / "a").glob("*.png"))).size == (32, 32)
    native = json.loads((Path(model) / "unet" / "config.json").read_text())["sample_size"] * 2 ** (
        len(json.loads((Path(model) / "vae" / "config.json").read_text())["block_out_channels"]) - 1)
    assert main(["generate", "--model", model, "--prompt", "a cat", "--steps", "1", "--seed", "1", "--out",
                 str(tmp_path / "b")]) == 0
    assert Image.open(next((tmp_path / "b").glob("*.png"))).size == (native, native)


# ---- class 15: CPU threads ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("sets,env,expected", [([], {}, "CPU threads: 1 (auto: a small model"),
                                               (["train.cpu_threads=2"], {}, "CPU threads: 2 (train.cpu_threads"),
                                               ([], {"OMP_NUM_THREADS": "2"}, "CPU threads: 2 (OMP_NUM_THREADS")])
def test_cpu_threads_follow_the_setting_the_environment_or_the_model(tmp_path, dataset, sets, env, expected):
    base = cli_env(tmp_path)
    base.pop("OMP_NUM_THREADS")
    cmd = [sys.executable, "-m", "sd_lora", "train", "--set", f"data.dir={dataset}", "--set",
           f"output.dir={tmp_path / 'out'}", "--set", "output.log_with=none", "--set", "train.max_steps=1",
           *[a for s in sets for a in ("--set", s)]]
    result = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, env={**base, **env}, timeout=300)
    assert_ok(result)
    assert expected in result.stdout, result.stdout
