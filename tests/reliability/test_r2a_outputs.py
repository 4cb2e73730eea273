"""Round 2 (A), class 2: every command writes only its own output paths. Each subcommand is pointed at a folder
that already holds a user's `important.txt` and a subfolder; afterwards they are byte-identical and the only new
entries are the command's own outputs."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.reliability.conftest import assert_ok, assert_unchanged, assert_user_error, run_cli, snapshot, write_image


def populated(folder: Path) -> dict[str, str]:
    (folder / "sub").mkdir(parents=True, exist_ok=True)
    (folder / "important.txt").write_text("do not lose me")
    (folder / "sub" / "keep.txt").write_text("nor me")
    return snapshot(folder)


def assert_kept_and_only(before: dict[str, str], folder: Path, *new: str) -> None:
    """Every file of `before` unchanged; the new top-level entries are exactly `new` (globs)."""
    after = snapshot(folder)
    assert {k: after.get(k) for k in before} == before, "a file that was there changed or went"
    added = {k.split("/")[0] for k in set(after) - set(before)}
    unexpected = [a for a in added if not any(Path(a).match(pattern) for pattern in new)]
    assert not unexpected, unexpected
    assert all(any(Path(a).match(p) for a in added) for p in new), (added, new)


@pytest.fixture(scope="module")
def models(tiny_models):
    return tiny_models


def test_train_writes_only_its_outputs(tmp_path, dataset):
    out = tmp_path / "target"
    before = populated(out)
    assert_ok(run_cli("train", "--set", f"data.dir={dataset}", "--set", "data.resolution=32", "--set",
                      f"output.dir={out}", "--set", "output.log_with=none", "--set", "network.rank=2",
                      "--set", "train.max_steps=1", cwd=tmp_path))
    assert_kept_and_only(before, out, "lora.safetensors", "lora.config.toml", "checkpoints", "logs")


def test_generate_writes_only_its_images(tmp_path):
    out = tmp_path / "target"
    before = populated(out)
    assert_ok(run_cli("generate", "--model", "builtin:tiny", "--steps", "1", "--prompt", "a cat", "--seed", "1-2",
                      "--out", out, cwd=tmp_path))
    assert_kept_and_only(before, out, "0000[01]-[12].png", "0000[01]-[12].json", "grid-00000.png")


def test_convert_writes_only_its_file(tmp_path, adapter_files):
    out = tmp_path / "target"
    before = populated(out)
    assert_ok(run_cli("convert", adapter_files["sd1"], out / "x.safetensors", "--to", "diffusers", cwd=tmp_path))
    assert_kept_and_only(before, out, "x.safetensors")


@pytest.mark.parametrize("tool", ["merge", "resize"])
def test_adapter_tools_write_only_their_file(tmp_path, adapter_files, tool):
    out = tmp_path / "target"
    before = populated(out)
    args = ([f"{adapter_files['sd1']}:0.5", f"{adapter_files['sd1']}:0.25"] if tool == "merge"
            else [adapter_files["sd1"], "--rank", "2"])
    assert_ok(run_cli(tool, *args, "-o", out / "x.safetensors", cwd=tmp_path))
    assert_kept_and_only(before, out, "x.safetensors")


def test_extract_writes_only_its_file(tmp_path, models):
    out = tmp_path / "target"
    before = populated(out)
    assert_ok(run_cli("extract", "--base", models / "tiny0", "--tuned", models / "tiny1", "-o", out / "x.safetensors",
                      "--rank", "2", cwd=tmp_path))
    assert_kept_and_only(before, out, "x.safetensors")


def test_bake_single_file_writes_only_its_file(tmp_path, adapter_files):
    out = tmp_path / "target"
    before = populated(out)
    assert_ok(run_cli("bake", "--model", "builtin:tiny", "--lora", adapter_files["sd1"], "-o", out / "m.safetensors",
                      cwd=tmp_path))
    assert_kept_and_only(before, out, "m.safetensors")


def test_bake_into_a_populated_folder_is_refused_and_the_folder_kept(tmp_path, adapter_files):
    """The diffusers output replaces its whole folder, so a folder holding the user's files is refused."""
    out = tmp_path / "target"
    before = populated(out)
    result = run_cli("bake", "--model", "builtin:tiny", "--lora", adapter_files["sd1"], "-o", out, cwd=tmp_path)
    assert_user_error(result, "bake", str(out), "important.txt", "sub/", "new or empty folder")
    assert_unchanged(before, out)


def test_bake_replaces_its_own_earlier_folder(tmp_path, adapter_files):
    out = tmp_path / "baked"
    assert_ok(run_cli("bake", "--model", "builtin:tiny", "--lora", f"{adapter_files['sd1']}:0.5", "-o", out,
                      cwd=tmp_path))
    first = snapshot(out)
    assert_ok(run_cli("bake", "--model", "builtin:tiny", "--lora", adapter_files["sd1"], "-o", out, cwd=tmp_path))
    assert snapshot(out) != first and (out / "model_index.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".baked.")]  # no temporary folders left


def test_make_tiny_into_a_populated_folder_is_refused(tmp_path):
    out = tmp_path / "target"
    before = populated(out)
    assert_user_error(run_cli("make-tiny", out, cwd=tmp_path), "make-tiny", str(out), "not empty")
    assert_unchanged(before, out)


def test_inspect_writes_nothing(tmp_path, adapter_files):
    before = populated(tmp_path / "cwd")
    assert_ok(run_cli("inspect", adapter_files["sd1"], "--ranks", cwd=tmp_path / "cwd"))
    assert_unchanged(before, tmp_path / "cwd")
