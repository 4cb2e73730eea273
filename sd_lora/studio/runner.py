"""The queue: runs execute one at a time as `python -m sd_lora train` subprocesses.

Stopping a run sends SIGINT, which `sd-lora train` answers by finishing the step and saving its state and
adapter (sd_lora.train.signals); starting it again resumes with `train.resume = latest` whenever the run folder
holds a complete state. A child also gets SIGINT when the studio process dies (Linux PR_SET_PDEATHSIG), so
killing the studio saves the run's state, and the next studio start puts the run back at the queue's front.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import sd_lora
from sd_lora.errors import SdLoraError
from sd_lora.studio import forms
from sd_lora.studio.db import ACTIVE, RESUMABLE, Store
from sd_lora.studio.paths import Roots

__all__ = ["Runner", "run_dir", "has_state", "BASELINE"]

_PR_SET_PDEATHSIG = 1
BASELINE = "baseline"  # the base model's images for the sample prompts, before any training
# (beside samples/, not in it: a samples folder with images marks an earlier run that a new `train` refuses to mix with)


def _baseline_command(cfg, folder: Path, out: Path) -> list[str]:
    """`sd-lora generate` of the run's sample prompts on the bare base model (the gallery's step 0), with the
    seeds, size and sampler the training samples use."""
    import json

    s = cfg.sample
    prompts = folder / "baseline_prompts.jsonl"
    rows = [{"prompt": p, "negative_prompt": s.negative_prompt, "seed": s.seed + i, "steps": s.steps,
             "guidance": s.guidance_scale, "width": s.width or cfg.data.resolution,
             "height": s.height or cfg.data.resolution} for i, p in enumerate(s.prompts)]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cmd = [sys.executable, "-m", "sd_lora", "generate", "--model", cfg.model.pretrained, "--prompt-file", str(prompts),
           "--scheduler", s.scheduler, "--out", str(out)]
    if cfg.train.clip_skip:
        cmd += ["--clip-skip", str(cfg.train.clip_skip)]
    return cmd


def run_dir(home: Path, run_id: int) -> Path:
    return home / "runs" / f"{run_id:05d}"


def has_state(out_dir: Path) -> bool:
    from sd_lora.train.checkpoint import find_checkpoint

    try:
        find_checkpoint(out_dir, "latest")
        return True
    except SdLoraError:
        return False


def _death_signal():
    """A function for the child (between fork and exec) asking Linux for SIGINT when the studio dies; looked up
    here in the parent, since loading a library after a fork of a threaded process can deadlock."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    return lambda: prctl(_PR_SET_PDEATHSIG, int(signal.SIGINT))


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie has exited
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


class Runner:
    def __init__(self, store: Store, home: Path, roots: Roots, *, concurrency: int = 1, poll_s: float = 0.5):
        self.store, self.home, self.roots = store, home, roots
        self.concurrency = max(1, concurrency)
        self.poll_s = poll_s
        self.procs: dict[int, subprocess.Popen] = {}
        self._requested: dict[int, str] = {}  # run id -> "stop" while its SIGINT is being answered
        self._phase: dict[int, str] = {}  # run id -> "baseline" (step-0 samples) or "train"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- lifecycle ----------------------------------------------------------------------------------
    def start(self) -> None:
        self._recover()
        self._thread = threading.Thread(target=self._loop, name="sd-lora-queue", daemon=True)
        self._thread.start()

    def shutdown(self, timeout_s: float = 60.0) -> None:
        """Studio exit: running runs save their state and go back to the queue's front for the next start."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            procs = dict(self.procs)
        for run_id, proc in procs.items():
            self._signal(proc)
        deadline = time.monotonic() + timeout_s
        for run_id, proc in procs.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            self.store.update(run_id, status="queued", position=self.store.front_position(), pid=None,
                              message="interrupted by the studio's exit; resumes from its last saved state")
        self.procs.clear()

    def _recover(self) -> None:
        """Runs a dead studio left 'running': wait for their process (it got SIGINT and is saving), then queue them
        first, so they resume from their last state."""
        for run in self.store.with_status(*ACTIVE):
            deadline = time.monotonic() + 120
            while _pid_alive(run.pid) and time.monotonic() < deadline:
                time.sleep(0.2)
            if _pid_alive(run.pid):
                os.kill(run.pid, signal.SIGKILL)
            stopping = run.status == "stopping"
            self.store.update(run.id, status="stopped" if stopping else "queued", pid=None,
                              position=self.store.front_position(),
                              message="" if stopping else "the studio stopped while it ran; resumes from its last state")

    # ---- actions ------------------------------------------------------------------------------------
    def stop(self, run_id: int) -> None:
        """Running: SIGINT (state and adapter saved, then 'stopped'). Queued: taken out of the queue."""
        run = self._get(run_id)
        with self._lock:
            proc = self.procs.get(run_id)
            if proc is not None and run.status == "running":
                self._requested[run_id] = "stop"
                self.store.update(run_id, status="stopping")
                self._signal(proc)
                return
        if run.status == "queued":
            self.store.update(run_id, status="cancelled", message="taken out of the queue")
            return
        raise SdLoraError(f"run {run_id} is {run.status}; only a queued or running run can be stopped")

    def resume(self, run_id: int) -> None:
        run = self._get(run_id)
        if run.status not in RESUMABLE:
            raise SdLoraError(f"run {run_id} is {run.status}; only a stopped, failed or cancelled run can be resumed")
        self.store.update(run_id, status="queued", position=self.store.end_position(), message="", returncode=None)

    def move(self, run_id: int, delta: int) -> None:
        run = self._get(run_id)
        if run.status != "queued":
            raise SdLoraError(f"run {run_id} is {run.status}; only queued runs can be moved")
        self.store.move(run_id, delta)

    def _get(self, run_id: int):
        run = self.store.get(run_id)
        if run is None:
            raise LookupError(f"run {run_id} does not exist")
        return run

    @staticmethod
    def _signal(proc: subprocess.Popen) -> None:
        try:
            proc.send_signal(signal.SIGINT)
        except ProcessLookupError:
            pass

    # ---- the loop -----------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as e:  # the queue must keep going; the error is shown on the run
                print(f"sd-lora studio: queue error: {type(e).__name__}: {e}", file=sys.stderr)
            self._stop.wait(self.poll_s)

    def tick(self) -> None:
        with self._lock:
            for run_id, proc in list(self.procs.items()):
                if proc.poll() is not None:
                    self._finished(run_id, proc.returncode)
                    del self.procs[run_id]
            free = self.concurrency - len(self.procs)
        for run in self.store.queued()[:max(0, free)]:
            self._launch(run)

    def _launch(self, run) -> None:
        folder = run_dir(self.home, run.id)
        out_dir = folder / "output"
        try:
            data = forms.parse_toml(run.config, f"run {run.id}'s config")
            cfg, problems = forms.validate(data, self.roots)
            if problems:
                raise SdLoraError("; ".join(problems))
        except SdLoraError as e:
            self.store.update(run.id, status="failed", message=str(e), finished=time.time())
            return
        from sd_lora.fileio import atomic_write_text

        folder.mkdir(parents=True, exist_ok=True)
        config_path = folder / "config.toml"
        atomic_write_text(config_path, forms.run_config_text(cfg, out_dir))
        resumed = has_state(out_dir)
        baseline = out_dir / BASELINE
        if not resumed and cfg.sample.every_n_steps and cfg.sample.prompts and not baseline.exists():
            self._spawn(run, _baseline_command(cfg, folder, baseline), "baseline", "rendering the step-0 baseline")
            return
        cmd = [sys.executable, "-m", "sd_lora", "train", "--config", str(config_path)]
        if resumed:
            cmd += ["--set", "train.resume=latest"]
        else:  # the studio's own run folder: a run with no state to resume from starts over (samples of a stop
            cmd += ["--overwrite"]  # before the first save included); the baseline lives beside samples/
        self._spawn(run, cmd, "train", "resumed from its last state" if resumed else "")

    def _spawn(self, run, cmd: list[str], phase: str, message: str) -> None:
        folder = run_dir(self.home, run.id)
        env = dict(os.environ)
        package_parent = str(Path(sd_lora.__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join([package_parent, *filter(None, [env.get("PYTHONPATH")])])
        env["PYTHONUNBUFFERED"] = "1"
        log = open(folder / "train.log", "ab")
        log.write(f"\n$ {' '.join(cmd)}\n".encode())
        log.flush()
        try:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                    cwd=str(folder), start_new_session=True, preexec_fn=_death_signal())
        except OSError as e:
            self.store.update(run.id, status="failed", message=f"could not start {cmd[3]}: {e}")
            return
        finally:
            log.close()
        with self._lock:
            self.procs[run.id] = proc
            self._phase[run.id] = phase
        self.store.update(run.id, status="running", pid=proc.pid, started=run.started or time.time(), finished=None,
                          returncode=None, message=message)

    def _finished(self, run_id: int, returncode: int) -> None:
        requested = self._requested.pop(run_id, None)
        phase = self._phase.pop(run_id, "train")
        if phase == "baseline" and requested is None:
            # the baseline is a preview: without it the run still trains (its error stays in the log)
            baseline = run_dir(self.home, run_id) / "output" / BASELINE
            if returncode != 0:
                baseline.mkdir(parents=True, exist_ok=True)  # not tried again on resume
            self.store.update(run_id, status="queued", position=self.store.front_position(), pid=None)
            return
        log = run_dir(self.home, run_id) / "train.log"
        if requested == "stop":
            message = "stopped; its state is saved" if has_state(run_dir(self.home, run_id) / "output") else \
                "stopped before the first step (nothing to resume from: it starts again)"
            self.store.update(run_id, status="stopped", returncode=returncode, pid=None, message=message)
        elif returncode == 0:
            self.store.update(run_id, status="done", returncode=0, pid=None, finished=time.time(), message="finished")
        else:
            self.store.update(run_id, status="failed", returncode=returncode, pid=None, finished=time.time(),
                              message=_last_error(log) or f"sd-lora train exited with status {returncode}")


def _last_error(log: Path) -> str:
    try:
        lines = log.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return ""
    errors = [line for line in lines if "error:" in line]
    return errors[-1].strip() if errors else ""
