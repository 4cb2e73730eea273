"""Faults during training: kill -9 and signals during saves, resuming another run's state, unwritable or full
output folders, two runs in one folder, glob characters in names, NaN under accumulation, multi-process.

Each case runs the real CLI in a subprocess on `builtin:tiny` and checks the exit code, the message and the files.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.reliability.conftest import (NO_DAC, assert_ok, assert_unchanged, assert_user_error, cli_env, run_cli,
                                        snapshot, write_image)


def train_args(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--set", f"data.dir={data}", "--set", "data.resolution=32", "--set", f"output.dir={out}",
            "--set", "output.log_with=none", "--set", "network.rank=2", "--set", "train.batch_size=1",
            "--set", "train.log_every_n_steps=1", *extra]


def start(args: list[str], cwd: Path, log: Path, preexec=None) -> subprocess.Popen:
    out = open(log, "w")
    return subprocess.Popen([sys.executable, "-m", "sd_lora", *args], cwd=cwd, env=cli_env(cwd), stdout=out,
                            stderr=subprocess.STDOUT, text=True, preexec_fn=preexec)


def wait_for(log: Path, text: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    end = time.monotonic() + timeout
    while text not in log.read_text():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < end, f"{text!r} never appeared:\n{log.read_text()}"
        time.sleep(0.01)


def adapter(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_same_adapter(a: Path, b: Path) -> None:
    ta, tb = adapter(a), adapter(b)
    assert ta.keys() == tb.keys()
    different = [k for k in ta if not torch.equal(ta[k], tb[k])]
    assert not different, different[:5]


def visible_states(out: Path) -> list[Path]:
    root = out / "checkpoints"
    return sorted(p for p in root.glob("step-*")) if root.is_dir() else []


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("faults") / "data"
    for i in range(4):
        write_image(folder / f"{i}.png", colour=(60 * i, 40, 200 - 50 * i), caption=f"shape {i}")
    return folder


@pytest.fixture(scope="module")
def reference(data, tmp_path_factory):
    """An uninterrupted 8-step run saving every step: what every interrupted and resumed run must equal."""
    out = tmp_path_factory.mktemp("reference") / "out"
    assert_ok(run_cli(*train_args(data, out, "--set", "train.max_steps=8", "--set", "output.save_every_n_steps=1"),
                      cwd=out.parent))
    return out / "lora.safetensors"


@pytest.mark.parametrize("delay", [0.0, 0.15, 0.4])
def test_kill_9_during_saves_then_resume_gives_the_uninterrupted_adapter(tmp_path, data, reference, delay):
    out = tmp_path / "out"
    args = train_args(data, out, "--set", "train.max_steps=8", "--set", "output.save_every_n_steps=1")
    proc = start(args, tmp_path, tmp_path / "log")
    wait_for(tmp_path / "log", "step 1/8", proc)
    time.sleep(delay)  # every step saves, so most of the time goes to saving: the kill lands in or near one
    proc.kill()
    proc.wait()
    for state in visible_states(out):  # whatever was visible is complete: partial saves stay hidden
        assert (state / "sd_lora_state.json").is_file(), state
    again = args + (["--set", "train.resume=latest"] if visible_states(out) else [])
    assert_ok(run_cli(*again, cwd=tmp_path))
    assert_same_adapter(out / "lora.safetensors", reference)
    assert not [p for p in (out / "checkpoints").iterdir() if p.name.startswith(".")]


def _complete_run(data, out, cwd, *extra):
    assert_ok(run_cli(*train_args(data, out, "--set", "train.max_steps=4", "--set", "output.save_every_n_steps=2",
                                  *extra), cwd=cwd))


def test_latest_skips_an_incomplete_state_and_says_so(tmp_path, data):
    out = tmp_path / "out"
    _complete_run(data, out, tmp_path)
    broken = out / "checkpoints" / "step-000009"  # what a save killed before this release left: no marker
    shutil.copytree(out / "checkpoints" / "step-000004", broken)
    (broken / "sd_lora_state.json").unlink()
    (broken / "optimizer.bin").write_bytes(b"")
    done = run_cli(*train_args(data, out, "--set", "train.max_steps=6", "--set", "train.resume=latest"), cwd=tmp_path)
    assert_ok(done)
    assert "skipped the incomplete state" in done.stdout and "step-000009" in done.stdout
    assert "resumed from" in done.stdout and "step-000004 at step 4" in done.stdout


def test_an_explicit_incomplete_state_is_refused(tmp_path, data):
    out = tmp_path / "out"
    _complete_run(data, out, tmp_path)
    state = out / "checkpoints" / "step-000002"
    (state / "sd_lora_state.json").unlink()
    done = run_cli(*train_args(data, out, "--set", f"train.resume={state}"), cwd=tmp_path)
    assert_user_error(done, "train", "is not a complete sd-lora state", "interrupted")


def test_stale_partial_folders_are_cleaned_by_the_next_save(tmp_path, data):
    out = tmp_path / "out"
    (out / "checkpoints" / ".step-000003.partial").mkdir(parents=True)
    (out / "checkpoints" / ".step-000003.partial" / "optimizer.bin").write_bytes(b"half")
    _complete_run(data, out, tmp_path)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-000002", "step-000004"]


def test_resume_latest_refuses_another_runs_state_naming_each_difference(tmp_path, data):
    out = tmp_path / "out"
    _complete_run(data, out, tmp_path, "--set", "train.seed=1")
    before = snapshot(out)
    done = run_cli(*train_args(data, out, "--set", "train.max_steps=6", "--set", "train.seed=2",
                               "--set", "network.alpha=1.0", "--set", "train.resume=latest"), cwd=tmp_path)
    assert_user_error(done, "train", "was saved by a different run", "seed: state 1, this run 2",
                      "network.alpha: state 16.0, this run 1.0", "another output.dir")
    assert_unchanged(before, out)


def test_a_changed_rank_on_resume_is_one_clear_message(tmp_path, data):
    out = tmp_path / "out"
    _complete_run(data, out, tmp_path)
    done = run_cli(*train_args(data, out, "--set", "network.rank=4", "--set", "train.resume=latest"), cwd=tmp_path)
    message = assert_user_error(done, "train", "network.rank: state 2, this run 4", "cannot be changed on resume")
    assert len(message.splitlines()) < 6
    assert "size mismatch" not in done.stderr


def test_changed_block_dims_on_resume_are_refused(tmp_path, data):
    out = tmp_path / "out"
    _complete_run(data, out, tmp_path)
    dims = "[" + ",".join(["2"] * 12 + ["0"] + ["2"] * 12) + "]"  # the mid block (index 12) not adapted
    done = run_cli(*train_args(data, out, "--set", f"network.block_dims={dims}", "--set", "train.resume=latest"),
                   cwd=tmp_path)
    assert_user_error(done, "train", "network.block_dims: state None", "cannot be changed on resume")


def test_ignore_mismatch_resumes_an_explicit_state_with_a_note(tmp_path, data):
    out = tmp_path / "out"
    _complete_run(data, out, tmp_path, "--set", "train.seed=1")
    state = out / "checkpoints" / "step-000004"
    done = run_cli(*train_args(data, out, "--set", "train.max_steps=6", "--set", "train.seed=2",
                               "--set", f"train.resume={state}", "--set", "train.resume_ignore_mismatch=true"),
                   cwd=tmp_path)
    assert_ok(done)
    assert "resuming despite a difference" in done.stdout and "seed: state 1, this run 2" in done.stdout
    assert "at step 4" in done.stdout


def test_ignore_mismatch_cannot_override_the_network_shape(tmp_path, data):
    out = tmp_path / "out"
    _complete_run(data, out, tmp_path)
    state = out / "checkpoints" / "step-000004"
    done = run_cli(*train_args(data, out, "--set", "network.rank=3", "--set", f"train.resume={state}",
                               "--set", "train.resume_ignore_mismatch=true"), cwd=tmp_path)
    assert_user_error(done, "train", "network.rank: state 2, this run 3")


def test_ignore_mismatch_with_latest_is_a_config_error(tmp_path, data):
    done = run_cli(*train_args(data, tmp_path / "out", "--set", "train.resume=latest",
                               "--set", "train.resume_ignore_mismatch=true"), "--validate", cwd=tmp_path)
    assert_user_error(done, "train", "train.resume_ignore_mismatch: only with train.resume = a state folder")


def test_second_ctrl_c_during_the_stop_save_waits_and_the_run_resumes(tmp_path, data, reference):
    out = tmp_path / "out"
    args = train_args(data, out, "--set", "train.max_steps=8", "--set", "output.save_every_n_steps=1")
    log = tmp_path / "log"
    proc = start(args, tmp_path, log)
    wait_for(log, "step 2/8", proc)
    proc.send_signal(signal.SIGINT)
    while proc.poll() is None and "Resume with" not in log.read_text():  # keep pressing Ctrl-C until the save
        try:                                                              # is done: it must survive all of them
            proc.send_signal(signal.SIGINT)
        except ProcessLookupError:
            break
        time.sleep(0.003)
    proc.wait(timeout=60)
    text = log.read_text()
    assert proc.returncode == 0, text
    assert "Traceback" not in text and "saving, please wait" in text and "Resume with" in text
    assert all((s / "sd_lora_state.json").is_file() for s in visible_states(out))
    assert_ok(run_cli(*args, "--set", "train.resume=latest", cwd=tmp_path))
    assert_same_adapter(out / "lora.safetensors", reference)


def test_output_dir_under_a_file_fails_before_the_model_loads(tmp_path, data):
    (tmp_path / "afile").write_text("x")
    done = run_cli(*train_args(data, tmp_path / "afile" / "out"), cwd=tmp_path)
    assert_user_error(done, "train", "is a file", "choose another output.dir")
    assert "Dataset plan" not in done.stdout and "model:" not in done.stdout


def test_read_only_output_dir_fails_before_training(tmp_path, data):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.safetensors").write_bytes(b"keep me")
    before = snapshot(out)
    out.chmod(0o555)
    try:
        done = run_cli(*train_args(data, out), cwd=tmp_path, prefix=NO_DAC)
    finally:
        out.chmod(0o755)
    assert_user_error(done, "train", f"cannot write to {out}", "Permission denied", "Nothing was trained")
    assert "step 1/" not in done.stdout
    assert_unchanged(before, out)


def test_too_little_disk_space_fails_before_training(tmp_path, data):
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(small)]).returncode != 0:
        pytest.fail("this test needs root to mount a 300 KiB tmpfs (CI and developers run as root)")
    try:
        done = run_cli(*train_args(data, small / "out", "--set", "output.save_every_n_steps=1"), cwd=tmp_path)
        assert_user_error(done, "train", "MiB free, but this run will write about", "lower output.save_last_n")
        assert "step 1/" not in done.stdout
    finally:
        subprocess.run(["umount", str(small)])


def test_a_failed_write_during_a_save_is_one_error_and_keeps_the_previous_files(tmp_path, data):
    out = tmp_path / "out"
    _complete_run(data, out, tmp_path)
    before = snapshot(out)
    limit = (out / "lora.safetensors").stat().st_size // 2  # the next state or adapter file cannot be written

    def small_files():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG instead of being killed
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    log = tmp_path / "log"
    proc = start(train_args(data, out, "--set", "train.max_steps=6", "--set", "output.save_every_n_steps=2",
                            "--set", "train.resume=latest"), tmp_path, log, preexec=small_files)
    proc.wait(timeout=120)
    text = log.read_text()
    assert proc.returncode == 2, text
    assert "Traceback" not in text and text.count("sd-lora train: error: could not write") == 1, text
    assert "File too large" in text and "The files saved before are intact" in text
    after = snapshot(out)
    for name, digest in before.items():  # every earlier file is still there, unchanged
        if not name.startswith("logs"):
            assert after.get(name) == digest, name
    leftovers = [p for p in out.rglob("*") if p.name.startswith(".") and p.name != ".sd-lora.lock"]
    assert not leftovers and not (out / ".sd-lora.lock").exists()


def test_a_second_training_in_the_same_output_dir_is_refused(tmp_path, data):
    out = tmp_path / "out"
    first = start(train_args(data, out, "--set", "train.max_steps=100000"), tmp_path, tmp_path / "log")
    try:
        wait_for(tmp_path / "log", "step 1/", first)
        done = run_cli(*train_args(data, out, "--set", "train.max_steps=2"), cwd=tmp_path)
        assert_user_error(done, "train", "is in use by another training", f"pid {first.pid}", "another output.dir")
    finally:
        first.kill()
        first.wait()
    # the killed run left its lock behind: the next run sees that its process is gone and takes over
    again = run_cli(*train_args(data, out, "--set", "train.max_steps=2"), cwd=tmp_path)
    assert_ok(again)
    assert "taking over a stale lock" in again.stdout
    assert not (out / ".sd-lora.lock").exists()


def test_output_name_with_glob_characters_prunes_only_its_own_files(tmp_path, data):
    out = tmp_path / "out"
    out.mkdir()
    other = out / "sv-step000001.safetensors"  # another run's file, which the glob 's[v]-step*' matches
    other.write_bytes(b"another run")
    assert_ok(run_cli(*train_args(data, out, "--set", "output.name=s[v]", "--set", "train.max_steps=4",
                                  "--set", "output.save_every_n_steps=1", "--set", "output.save_last_n=1"),
                      cwd=tmp_path))
    assert other.read_bytes() == b"another run"
    assert sorted(p.name for p in out.glob("s[[]v]-step*")) == ["s[v]-step000003.safetensors"]


def test_sigterm_under_accumulation_with_the_text_encoder_resumes_bit_exact(tmp_path, data):
    common = ("--set", "train.max_steps=6", "--set", "train.gradient_accumulation_steps=2",
              "--set", "network.train_text_encoder=true")
    ref = tmp_path / "ref"
    assert_ok(run_cli(*train_args(data, ref, *common), cwd=tmp_path))
    out = tmp_path / "out"
    proc = start(train_args(data, out, *common), tmp_path, tmp_path / "log")
    wait_for(tmp_path / "log", "step 2/6", proc)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    text = (tmp_path / "log").read_text()
    assert proc.returncode == 0 and "stopped by SIGTERM" in text, text
    assert not (out / "lora.safetensors").exists()  # stopped early: a step-N adapter and a state, no final file
    assert_ok(run_cli(*train_args(data, out, *common, "--set", "train.resume=latest"), cwd=tmp_path))
    assert_same_adapter(out / "lora.safetensors", ref / "lora.safetensors")


def test_nan_loss_under_accumulation_with_the_text_encoder_names_the_step_and_keeps_saves(tmp_path, data):
    out = tmp_path / "out"
    _complete_run(data, out, tmp_path, "--set", "network.train_text_encoder=true")
    before = snapshot(out)
    done = run_cli(*train_args(data, out, "--set", "train.max_steps=8", "--set", "train.learning_rate=1e30",
                               "--set", "train.max_grad_norm=0", "--set", "train.gradient_accumulation_steps=2",
                               "--set", "network.train_text_encoder=true", "--set", "train.resume=latest"),
                   cwd=tmp_path)
    assert_user_error(done, "train", "training loss became", "at step", "the last saved adapter is intact")
    after = snapshot(out)
    assert all(after.get(k) == v for k, v in before.items() if not k.startswith("logs")), "an earlier file changed"


def test_prodigy_with_separate_learning_rates_is_refused_at_validation(tmp_path, data):
    done = run_cli(*train_args(data, tmp_path / "out", "--set", "train.optimizer=prodigy",
                               "--set", "train.learning_rate=1.0", "--set", "train.text_encoder_lr=0.5",
                               "--set", "network.train_text_encoder=true"), "--validate", cwd=tmp_path)
    assert_user_error(done, "train", "train.optimizer = 'prodigy' takes one learning rate", "text_encoder_lr")


def test_prodigy_trains_the_unet_and_text_encoder_groups(tmp_path, data):
    out = tmp_path / "out"
    assert_ok(run_cli(*train_args(data, out, "--set", "train.optimizer=prodigy", "--set", "train.learning_rate=1.0",
                                  "--set", "network.train_text_encoder=true", "--set", "train.max_steps=3"),
                      cwd=tmp_path))
    metrics = [json.loads(line) for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3] and set(metrics[-1]["lr"]) == {"unet", "text_encoder"}


def test_two_processes_with_batch_1_equal_one_process_with_batch_2(tmp_path):
    """A real gloo process group on the CPU: gradients are averaged across processes, so 2 x batch 1 trains the
    same adapter as 1 x batch 2 (two identical images, so both layouts see the same samples)."""
    data = tmp_path / "data"
    for i in range(2):
        write_image(data / f"{i}.png", colour=(200, 40, 40), caption="a red square")
    common = ("--set", "train.max_steps=3", "--set", "train.learning_rate=1e-4", "--set", "output.save_state_at_end=false",
              "--set", "output.save_precision=fp32")
    one = tmp_path / "one"
    assert_ok(run_cli(*train_args(data, one, "--set", "train.batch_size=2", *common), cwd=tmp_path))
    two = tmp_path / "two"
    launched = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "sd_lora",
                               *train_args(data, two, *common)], cwd=tmp_path, env=cli_env(tmp_path),
                              capture_output=True, text=True, timeout=300)
    assert launched.returncode == 0, launched.stdout[-2000:] + launched.stderr[-3000:]
    assert "1 per process x 1 accumulation x 2 process(es) = 2 effective" in launched.stdout
    assert launched.stdout.count("saved lora.safetensors") == 1  # one writer, not two runs into the same files
    a, b = adapter(one / "lora.safetensors"), adapter(two / "lora.safetensors")
    assert a.keys() == b.keys()
    ups = [k for k in a if "lora_up" in k]
    flat_a = torch.cat([a[k].flatten() for k in ups])
    flat_b = torch.cat([b[k].flatten() for k in ups])
    assert flat_a.abs().max() > 0  # the adapters trained (B starts at zero), so equality is not trivial
    # Adam divides by |gradient|, so entries whose gradient is ~0 differ by float noise; as a whole the two runs
    # agree to 1e-3 (two processes training alone, with their own noise, differ by ~100 %).
    assert (flat_a - flat_b).norm() / flat_a.norm() < 1e-3
    assert all(torch.equal(a[k], b[k]) for k in a if k.endswith(".alpha"))
