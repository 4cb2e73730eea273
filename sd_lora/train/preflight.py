"""Checks that run before any model loads, so a run never trains for hours and then cannot save.

- the optional packages the config asks for are installed (and CUDA where bitsandbytes needs it);
- `output.dir` can be created and written (not under a file, not read-only), checked by writing a probe file;
- once the adapter exists: the disk has room for the adapter files and states the run will keep;
- one training per `output.dir` at a time (`RunLock`);
- a finished or interrupted run in `output.dir` is never replaced silently: a new run there must resume it or be
  told to replace it (`--overwrite`), and replaced files are only deleted once the new run has saved something.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

from sd_lora.errors import SdLoraError

__all__ = ["check_environment", "needed_packages", "missing_packages", "check_output_dir", "check_free_space", "RunLock", "launched_processes",
           "needs_cpu_process_group", "check_process_group", "previous_run_files", "check_previous_run",
           "set_aside_previous_run", "restore_previous_run", "archive_unsaved_metrics"]


def needed_packages(cfg) -> list[tuple[str, str, str]]:
    """(module, the config setting that needs it, how to install it) for every optional package `cfg` uses."""
    from sd_lora.train.optim import optimizer_package

    t, needs = cfg.train, []
    if cfg.output.log_with in ("tensorboard", "wandb"):
        needs.append((cfg.output.log_with, f"output.log_with = {cfg.output.log_with!r}",
                      f"pip install 'sd-lora[{cfg.output.log_with}]', or set output.log_with = 'none'"))
    if t.attention == "xformers":
        needs.append(("xformers", "train.attention = 'xformers'",
                      "pip install 'sd-lora[xformers]', or use attention = 'sdpa'"))
    if cfg.model.quantize:
        needs.append(("bitsandbytes", f"model.quantize = {cfg.model.quantize!r}", "pip install 'sd-lora[bnb]'"))
    if (package := optimizer_package(t.optimizer)) is not None:
        module, name, extra = package
        needs.append((module, f"train.optimizer = {t.optimizer!r}",
                      f"pip install 'sd-lora[{extra}]' (the {name} package), or use optimizer = 'adamw'"))
    return needs


def missing_packages(cfg, try_import: bool = False) -> list[str]:
    """One line per optional package the config needs that is not installed (with `try_import`: that does not
    import, e.g. a build for another CUDA)."""
    missing = []
    for module, setting, fix in needed_packages(cfg):
        if importlib.util.find_spec(module) is None:
            missing.append(f"{setting} but {module} is not installed: {fix}")
        elif try_import:
            try:
                importlib.import_module(module)
            except Exception as e:  # a broken install fails in many ways
                missing.append(f"{setting} but {module}, though installed, does not import "
                               f"({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}): {fix}")
    return missing


def check_environment(cfg) -> None:
    missing = missing_packages(cfg)
    if missing:
        raise SdLoraError("; ".join(missing))
    if cfg.model.quantize:
        import torch

        if not torch.cuda.is_available():
            raise SdLoraError(f"model.quantize = {cfg.model.quantize!r} runs on CUDA only (bitsandbytes); "
                              "remove it to train the unquantised model on this machine")


def launched_processes() -> int:
    """How many processes the launcher (accelerate launch, torchrun, mpirun) started for this run."""
    for name in ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


def needs_cpu_process_group() -> bool:
    """Several processes and no GPU: accelerate forms a gloo group only when told to run on the CPU (otherwise each
    process trains alone, all of them into the same files)."""
    import torch

    return launched_processes() > 1 and not torch.cuda.is_available()


def check_process_group(accelerator) -> None:
    launched = launched_processes()
    if launched > 1 and accelerator.num_processes != launched:
        raise SdLoraError(f"{launched} processes were launched but they formed no process group (accelerate sees "
                          f"{accelerator.num_processes}); each would train alone into the same files. Launch with "
                          "`accelerate launch --num_processes N -m sd_lora train ...` (add --multi_gpu on GPUs) or "
                          "torchrun, or run one process")


def check_output_dir(out_dir: Path) -> None:
    """Create `out_dir` and write a probe file in it, or say why that is impossible."""
    for parent in [out_dir, *out_dir.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise SdLoraError(f"output.dir: {out_dir} cannot be created: {parent} is a file; "
                                  "choose another output.dir")
            break
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".sd-lora-probe.", dir=out_dir)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise SdLoraError(f"output.dir: cannot write to {out_dir} ({e.strerror or e}); fix its permissions or "
                          "choose another output.dir. Nothing was trained.") from e


def check_free_space(out_dir: Path, adapter_params: int, saves_kept: int) -> None:
    """Room for the final adapter plus `saves_kept` (adapter file + state: fp32 adapter and two AdamW moments)."""
    adapter_file = adapter_params * 4  # fp32 at most
    state = adapter_params * 4 * 3
    needed = adapter_file + saves_kept * (adapter_file + state) + (16 << 20)  # + metrics, configs, samples
    free = shutil.disk_usage(out_dir).free
    if free < needed:
        raise SdLoraError(f"output.dir: {out_dir} has {free / 2**20:.1f} MiB free, but this run will write about "
                          f"{needed / 2**20:.1f} MiB (adapter and {saves_kept} state(s) of {adapter_params:,} "
                          "parameters); free some space, lower output.save_last_n, or choose another output.dir")


def previous_run_files(out_dir: Path, name: str) -> list[Path]:
    """What an earlier run left in `out_dir` that this run would replace or mix with: its adapter, config and
    intermediate adapters under `name`, states (`checkpoints/step-*`) and sample recipes, with its logs. A run
    killed before it saved anything left only logs (see `archive_unsaved_metrics`)."""
    import re

    if not out_dir.is_dir():
        return []
    own = re.compile(re.escape(name) + r"(\.safetensors|\.config\.toml|-step\d{6,}\.safetensors)")
    found = [p for p in out_dir.iterdir() if p.is_file() and own.fullmatch(p.name)]
    if any(p.is_dir() for p in (out_dir / "checkpoints").glob("step-*")):
        found.append(out_dir / "checkpoints")
    if (out_dir / "samples").is_dir() and any((out_dir / "samples").iterdir()):
        found.append(out_dir / "samples")
    if found and (out_dir / "logs").is_dir():
        found.append(out_dir / "logs")
    return sorted(found)


def archive_unsaved_metrics(out_dir: Path) -> Path | None:
    """A new run's metrics never append to those of a run that saved nothing (killed early): that file is renamed
    `metrics.<its date>.jsonl` beside it."""
    metrics = out_dir / "logs" / "metrics.jsonl"
    if not metrics.is_file():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(metrics.stat().st_mtime))
    kept = metrics.with_name(f"metrics.{stamp}.jsonl")
    os.replace(metrics, kept)
    print(f"note: {metrics} held the metrics of an earlier run that saved nothing; kept as {kept.name}")
    return kept


def check_previous_run(out_dir: Path, name: str, resume: str, overwrite: bool) -> list[Path]:
    """The earlier run's files when `overwrite` says to replace them; an error when it does not (and the run does
    not resume); [] when there is nothing to protect or the run continues the earlier one."""
    found = previous_run_files(out_dir, name)
    if not found or resume:
        return []
    if overwrite:
        return found
    shown = ", ".join(p.name + ("/" if p.is_dir() else "") for p in found[:6]) + (" ..." if len(found) > 6 else "")
    raise SdLoraError(f"output.dir: {out_dir} already holds a training run ({shown}); a new run would replace or mix "
                      "with its adapter, states, metrics and samples. Continue it with --set train.resume=latest, "
                      "choose another output.dir, or pass --overwrite to replace it (its files are deleted only "
                      "once the new run has saved). Nothing was trained.")


def set_aside_previous_run(out_dir: Path, files: list[Path]) -> Path | None:
    """Move the replaced run's files into a hidden folder of `out_dir` (one rename each, same disk); the caller
    deletes it after the new adapter is saved, so a failed new run loses nothing."""
    if not files:
        return None
    aside = Path(tempfile.mkdtemp(prefix=".replaced-run.", dir=out_dir))
    for path in files:
        os.replace(path, aside / path.name)
    print(f"note: --overwrite: the earlier run's files ({len(files)}) are moved to {aside} and deleted when this "
          "run has saved")
    return aside


def restore_previous_run(out_dir: Path, aside: Path) -> None:
    """Put the set-aside files back (a new run that failed before saving must not cost the earlier one)."""
    kept = []
    for path in sorted(aside.iterdir()):
        target = out_dir / path.name
        if target.exists() and target.is_dir() and not any(target.iterdir()):
            target.rmdir()  # an empty logs/ or samples/ folder this run made
        if target.exists():
            kept.append(path.name)
        else:
            os.replace(path, target)
    if kept:
        print(f"note: this run saved nothing, so the earlier run's files are kept in {aside} ({', '.join(kept)}); "
              f"move them back into {out_dir} to restore that run")
    else:
        aside.rmdir()


class RunLock:
    """`{output.dir}/.sd-lora.lock` holding the PID and host of the run using the folder. A lock whose process is
    gone (same host) is stale and taken over, with a note."""

    def __init__(self, out_dir: Path):
        self.path = out_dir / ".sd-lora.lock"
        self.held = False

    def acquire(self) -> None:
        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                owner = self._owner()
                if owner == {}:
                    continue  # released meanwhile
                if owner and owner.get("pid") == os.getpid() and owner.get("host") == socket.gethostname():
                    self.path.unlink(missing_ok=True)  # this process's own earlier run (a notebook, a test)
                    continue
                if owner is not None and not self._stale(owner):
                    raise SdLoraError(
                        f"output.dir {self.path.parent} is in use by another training (pid {owner.get('pid')} on "
                        f"{owner.get('host')}, started {owner.get('started')}); wait for it to finish, or use "
                        f"another output.dir. If that run is gone, delete {self.path}") from None
                print(f"note: taking over a stale lock of a run that ended without cleaning up ({self.path})")
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(me, f)
            self.held = True
            return
        raise SdLoraError(f"output.dir: could not take the lock {self.path}; another run may be starting there")

    def _owner(self) -> dict | None:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}  # released meanwhile: try again
        except (OSError, ValueError):
            return None  # unreadable or half written: treat as stale

    @staticmethod
    def _stale(owner: dict) -> bool:
        if owner.get("host") != socket.gethostname():
            return False  # another machine's run (shared disk): cannot tell, keep it
        try:
            os.kill(int(owner["pid"]), 0)
        except ProcessLookupError:
            return True
        except (PermissionError, KeyError, ValueError, TypeError):
            return False
        return False

    def release(self) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
