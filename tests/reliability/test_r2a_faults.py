"""Round 2 (A), class 7: a full disk (a file-size limit: EFBIG, as ENOSPC reaches the same code) and a read-only
folder (root's DAC capabilities dropped) in every command that writes: one `sd-lora CMD: error:` naming the path
and the fix, no traceback, nothing under the final name, no temporary file left; stale temporaries of a killed
write are removed by the next one."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest

from tests.reliability.conftest import NO_DAC, assert_ok, assert_unchanged, assert_user_error, run_cli, snapshot


def fsize(limit: int) -> list[str]:
    return ["prlimit", f"--fsize={limit}", "--"]


@pytest.fixture(scope="module")
def models(tiny_models):
    return tiny_models


def command(name: str, out: Path, files: dict, models: Path) -> list:
    sd1 = files["sd1"]
    return {"make-tiny": ["make-tiny", out / "model"],
            "convert": ["convert", sd1, out / "x.safetensors", "--to", "diffusers"],
            "merge": ["merge", f"{sd1}:0.5", f"{sd1}:0.25", "-o", out / "x.safetensors"],
            "resize": ["resize", sd1, "-o", out / "x.safetensors", "--rank", "2"],
            "extract": ["extract", "--base", models / "tiny0", "--tuned", models / "tiny1", "-o", out / "x.safetensors",
                        "--rank", "2"],
            "bake-file": ["bake", "--model", "builtin:tiny", "--lora", sd1, "-o", out / "x.safetensors"],
            "bake-folder": ["bake", "--model", "builtin:tiny", "--lora", sd1, "-o", out / "model"],
            "generate": ["generate", "--model", "builtin:tiny", "--prompt", "a cat", "--steps", "1", "--seed", "1",
                         "--out", out / "images"]}[name]


COMMANDS = ["make-tiny", "convert", "merge", "resize", "extract", "bake-file", "bake-folder", "generate"]


@pytest.mark.parametrize("name", COMMANDS)
def test_a_full_disk_is_one_clear_error_and_leaves_nothing(tmp_path, adapter_files, models, name):
    out = tmp_path / "out"
    out.mkdir()
    (out / "important.txt").write_text("mine")
    before = snapshot(out)
    args = command(name, out, adapter_files, models)
    result = run_cli(*args, cwd=tmp_path, prefix=fsize(600 if name == "generate" else 4096))
    message = assert_user_error(result, args[0], "File too large")
    assert str(out) in message, message
    assert "free some space" in message.lower() or "free space" in message.lower(), message
    if name == "generate":  # it may keep its --out folder; nothing is in it
        assert not (out / "images").exists() or not any((out / "images").iterdir())
        shutil.rmtree(out / "images", ignore_errors=True)
    assert_unchanged(before, out)


@pytest.mark.parametrize("name", COMMANDS)
def test_a_read_only_output_folder_is_one_clear_error(tmp_path, adapter_files, models, name):
    out = tmp_path / "out"
    out.mkdir()
    (out / "important.txt").write_text("mine")
    before = snapshot(out)
    out.chmod(0o555)
    try:
        args = command(name, out, adapter_files, models)
        result = run_cli(*args, cwd=tmp_path, prefix=NO_DAC)
    finally:
        out.chmod(0o755)
    message = assert_user_error(result, args[0], "ermission denied")
    assert str(out) in message, message
    assert_unchanged(before, out)


def test_a_killed_writes_stale_temporary_is_removed_by_the_next_write(tmp_path, adapter_files):
    stale = tmp_path / ".x.safetensors.k1ll3d.tmp"
    fresh = tmp_path / ".x.safetensors.wr1t1ng.tmp"  # another process may be writing this one right now
    stale.write_bytes(b"half a file")
    fresh.write_bytes(b"being written")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    assert_ok(run_cli("convert", adapter_files["sd1"], tmp_path / "x.safetensors", "--to", "diffusers", cwd=tmp_path))
    assert not stale.exists() and fresh.exists() and (tmp_path / "x.safetensors").is_file()


def test_make_tiny_after_a_full_disk_leaves_no_half_model(tmp_path):
    result = run_cli("make-tiny", tmp_path / "model", cwd=tmp_path, prefix=fsize(4096))
    assert_user_error(result, "make-tiny", str(tmp_path / "model"))
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # neither the folder nor a temporary one
    from sd_lora.cli.main import main

    assert main(["make-tiny", str(tmp_path / "model")]) == 0  # the retry is not blocked


def test_an_unwritable_disk_cache_stops_training_with_the_cache_path(tmp_path, dataset):
    dataset.chmod(0o555)
    try:
        result = run_cli("train", "--set", f"data.dir={dataset}", "--set", "data.cache_latents=true", "--set",
                         "data.cache_latents_to_disk=true", "--set", f"output.dir={tmp_path / 'out'}", "--set",
                         "output.log_with=none", "--set", "train.max_steps=1", cwd=tmp_path, prefix=NO_DAC)
    finally:
        dataset.chmod(0o755)
    assert_user_error(result, "train", "the disk cache", ".sd_lora_cache", "Permission denied",
                      "cache_latents_to_disk = false", "Nothing was trained")
    assert not (tmp_path / "out" / "lora.safetensors").exists()


def test_a_full_disk_while_training_writes_its_adapter_is_one_error(tmp_path, dataset):
    """The adapter itself (not a periodic state) does not fit: one message, the final name never half written."""
    result = run_cli("train", "--set", f"data.dir={dataset}", "--set", f"output.dir={tmp_path / 'out'}", "--set",
                     "output.log_with=none", "--set", "train.max_steps=1", "--set", "output.save_state_at_end=false",
                     cwd=tmp_path, prefix=fsize(20_000))
    assert_user_error(result, "train", "could not write the adapter", "File too large", "free some space")
    out = tmp_path / "out"
    assert not (out / "lora.safetensors").exists()
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    shutil.rmtree(out)
