"""Round 2 (A), class 1: a second training run into an `output.dir` that holds a run never replaces or mixes with
it unless told to (`--overwrite`); resuming is the way to continue. Real CLI in subprocesses on `builtin:tiny`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.reliability.conftest import assert_ok, assert_unchanged, assert_user_error, run_cli, snapshot


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--set", f"data.dir={data}", "--set", "data.resolution=32", "--set", f"output.dir={out}",
            "--set", "output.log_with=none", "--set", "network.rank=2", "--set", "train.batch_size=1",
            "--set", "train.max_steps=2", "--set", "train.log_every_n_steps=1", *extra]


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 2-step run (states saved every step), its dataset, and a file of the user's beside it."""
    from tests.reliability.conftest import write_image

    root = tmp_path_factory.mktemp("runs")
    for i in range(3):
        write_image(root / "data" / f"{i}.png", colour=(60 * i, 40, 200 - 50 * i))
    out = root / "out"
    assert_ok(run_cli(*train_args(root / "data", out, "--set", "output.save_every_n_steps=1"), cwd=root))
    (out / "important.txt").write_text("mine")
    return root, out


def _copy(out: Path, to: Path) -> Path:
    import shutil

    shutil.copytree(out, to)
    return to


def _metric_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()
            if '"loss"' in line]


def test_second_run_into_a_finished_run_is_refused_and_changes_nothing(finished, tmp_path):
    root, src = finished
    out = _copy(src, tmp_path / "out")
    before = snapshot(out)
    result = run_cli(*train_args(root / "data", out, "--set", "train.seed=7"), cwd=tmp_path)
    assert_user_error(result, "train", "already holds a training run", "lora.safetensors", "train.resume=latest",
                      "--overwrite", "Nothing was trained")
    assert "model: family" not in result.stdout  # refused before any model loads
    assert_unchanged(before, out)


def test_a_run_with_another_output_name_is_refused_too(finished, tmp_path):
    """States, metrics and sample recipes are per folder: another name would still mix with them."""
    root, src = finished
    out = _copy(src, tmp_path / "out")
    before = snapshot(out)
    result = run_cli(*train_args(root / "data", out, "--set", "output.name=other"), cwd=tmp_path)
    assert_user_error(result, "train", "already holds a training run", "checkpoints/", "logs/")
    assert_unchanged(before, out)


def test_an_interrupted_run_folder_is_refused_without_resume(finished, tmp_path):
    root, src = finished
    out = _copy(src, tmp_path / "out")
    for f in out.glob("lora*"):
        f.unlink()  # only the states and logs of a run that never finished
    before = snapshot(out)
    result = run_cli(*train_args(root / "data", out), cwd=tmp_path)
    assert_user_error(result, "train", "already holds a training run", "checkpoints/")
    assert_unchanged(before, out)


def test_overwrite_replaces_only_the_runs_own_files(finished, tmp_path):
    root, src = finished
    out = _copy(src, tmp_path / "out")
    (out / "notes").mkdir()
    (out / "notes" / "a.txt").write_text("keep")
    old_adapter = (out / "lora.safetensors").read_bytes()
    result = run_cli(*train_args(root / "data", out, "--set", "train.seed=7", "--set", "train.max_steps=1",
                                 "--overwrite"), cwd=tmp_path)
    assert_ok(result)
    assert "--overwrite" in result.stdout
    assert (out / "lora.safetensors").read_bytes() != old_adapter
    assert (out / "important.txt").read_text() == "mine" and (out / "notes" / "a.txt").read_text() == "keep"
    assert _metric_steps(out) == [1]  # the new run's metrics only, never both runs mixed
    assert not list(out.glob("lora-step*")) and sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000001"]
    assert not [p for p in out.iterdir() if p.name.startswith(".replaced")]


def test_a_failed_overwrite_run_leaves_the_earlier_run_as_it_was(finished, tmp_path):
    root, src = finished
    out = _copy(src, tmp_path / "out")
    before = snapshot(out)
    (tmp_path / "empty").mkdir()
    result = run_cli(*train_args(tmp_path / "empty", out, "--overwrite"), cwd=tmp_path)
    assert_user_error(result, "train", "no usable training images")
    assert_unchanged(before, out)


def test_resume_continues_the_finished_run(finished, tmp_path):
    root, src = finished
    out = _copy(src, tmp_path / "out")
    result = run_cli(*train_args(root / "data", out, "--set", "train.max_steps=3", "--set", "train.resume=latest"),
                     cwd=tmp_path)
    assert_ok(result)
    assert "at step 2" in result.stdout
    assert _metric_steps(out) == [1, 2, 3]
    assert (out / "important.txt").read_text() == "mine"


def test_a_run_that_saved_nothing_does_not_block_and_its_metrics_are_kept_apart(finished, tmp_path):
    """A run killed before its first save left only logs/metrics.jsonl: the next run starts, with its own file."""
    root, _ = finished
    out = tmp_path / "out"
    (out / "logs").mkdir(parents=True)
    (out / "logs" / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    (out / "checkpoints" / ".step-000001.partial").mkdir(parents=True)  # its save was killed midway
    result = run_cli(*train_args(root / "data", out, "--set", "train.max_steps=1"), cwd=tmp_path)
    assert_ok(result)
    assert _metric_steps(out) == [1] and "saved nothing" in result.stdout
    kept = [p for p in (out / "logs").glob("metrics.*.jsonl")]
    assert len(kept) == 1 and kept[0].read_text() == '{"step": 1, "loss": 0.5}\n'
