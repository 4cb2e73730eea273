"""Resumable training state through accelerate, holding only what training changes.

A checkpoint folder `{output.dir}/checkpoints/step-NNNNNN/` holds accelerate's optimiser, RNG and
custom states plus one `adapter_<component>.safetensors` per adapted model — never the frozen base
(accelerate would save whole models; the hooks below swap in the adapter tensors).

Crash-safe: a state is written into `.step-NNNNNN.partial/`, its marker file `sd_lora_state.json` last (holding
the step and what the run was: base model, network, data, seed), then renamed into place. A folder without the
marker is incomplete and never resumed; `latest` is the newest complete state of *this* run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict

from sd_lora.errors import SdLoraError
from sd_lora.fileio import atomic_write_text, give_umask_modes
from sd_lora.formats.safetensors_io import read_tensor_file, write_tensors

__all__ = ["TrainingState", "install_adapter_only_hooks", "checkpoint_dir", "find_checkpoint", "prune",
           "run_fingerprint", "save_state", "check_fingerprint", "load_matching_state", "MARKER", "learning_settings",
           "FINGERPRINT_SECTIONS", "check_state_files"]

_STEP_DIR = re.compile(r"step-(\d+)$")
MARKER = "sd_lora_state.json"


class TrainingState:
    """Loop position and the noise/timestep generator, saved with every checkpoint."""

    def __init__(self, generator: torch.Generator):
        self.generator = generator
        self.global_step = 0
        self.epoch = 0
        self.batch_in_epoch = 0  # batches of `epoch` already consumed (this process)

    def state_dict(self) -> dict:
        return {"global_step": self.global_step, "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch,
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.global_step, self.epoch = int(state["global_step"]), int(state["epoch"])
        self.batch_in_epoch = int(state["batch_in_epoch"])
        self.generator.set_state(state["generator"])


def install_adapter_only_hooks(accelerator, names: list[str]) -> None:
    """Make `save_state`/`load_state` store only the adapter tensors of the prepared models, by name."""

    def save_hook(models, weights, output_dir):
        for name, model in zip(names, models):
            state = get_peft_model_state_dict(accelerator.unwrap_model(model))
            if accelerator.is_main_process:
                write_tensors(Path(output_dir) / f"adapter_{name}.safetensors", state)
        weights.clear()  # nothing else of the models is written

    def load_hook(models, input_dir):
        for name, model in zip(names, list(models)):
            path = Path(input_dir) / f"adapter_{name}.safetensors"
            if not path.is_file():
                raise SdLoraError(f"train.resume: {input_dir} has no {path.name}; it is not a state of this run's "
                                  "network (was train_text_encoder changed?)")
            result = set_peft_model_state_dict(accelerator.unwrap_model(model), read_tensor_file(path)[0])
            if getattr(result, "unexpected_keys", None):
                raise SdLoraError(f"train.resume: {path} does not match this network "
                                  f"(unexpected {result.unexpected_keys[:3]}…)")
        models.clear()  # accelerate must not look for full model files

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step-{step:06d}"


# the config sections whose settings decide what a state holds; every field counts unless its declaration says
# `resume="free"` (sd_lora.config.fields.option): it may change between a run and its resume
FINGERPRINT_SECTIONS = ("model", "network", "train")


def learning_settings(section) -> dict:
    """{field: value} of every field of config dataclass `section` that changes what is learned, as JSON values."""
    return {f.name: json.loads(json.dumps(getattr(section, f.name))) for f in dataclasses.fields(section)
            if f.metadata.get("resume") != "free"}


def run_fingerprint(cfg, scan) -> dict:
    """What a state must share with the run that resumes it: the learning settings of each section in
    FINGERPRINT_SECTIONS, and the data (each image's name, caption and size, each subset's repeats)."""
    data = hashlib.sha256()
    for subset in scan.subsets:
        data.update(f"{subset.spec.num_repeats}|{subset.spec.is_reg}\n".encode())
        for r in sorted(subset.records, key=lambda r: r.path.name):
            # surrogateescape: a file name that is not UTF-8 hashes as its bytes on disk (os.fsencode)
            data.update(f"{r.path.name}|{r.caption}|{r.width}x{r.height}\n".encode("utf-8", "surrogateescape"))
    return {**{name: learning_settings(getattr(cfg, name)) for name in FINGERPRINT_SECTIONS},
            "dataset": data.hexdigest()[:16]}


def _saved_section(saved: dict, name: str) -> dict:
    """A section of a state's marker; states saved before sections were recorded whole kept a few keys apart."""
    if isinstance(saved.get(name), dict):
        return saved[name]
    if name == "model" and "base model" in saved:
        pretrained, _, revision = str(saved["base model"]).partition("@")
        return {"pretrained": pretrained, **({"revision": revision} if revision else {})}
    if name == "train":
        return {k: saved[k] for k in ("seed", "optimizer") if k in saved}
    return {}


# network fields that decide the tensors' names and shapes: train.resume_ignore_mismatch cannot override these
_SHAPE = ("type", "rank", "conv_rank", "dora", "preset", "unet_targets", "unet_target_regex", "train_text_encoder",
          "text_encoder_targets", "lokr_factor", "block_dims", "conv_block_dims", "init_r", "oft_block_size",
          "oft_blocks", "boft_butterfly_factor")


def check_fingerprint(state: Path, saved: dict, current: dict, ignore_mismatch: bool) -> list[str]:
    """Refuse a state saved by a different run, naming each difference; return the differences overridden.
    A setting the state does not record (saved before that field existed) is not compared."""
    diffs = []
    for key, value in current.items():
        if isinstance(value, dict):
            old = _saved_section(saved, key)
            diffs += [(f"{key}.{name}", old[name], v) for name, v in value.items() if name in old and old[name] != v]
        elif key in saved and saved[key] != value:
            diffs.append((key, saved[key], value))
    if not diffs:
        return []
    listed = "\n  ".join(f"{name}: state {old!r}, this run {new!r}" for name, old, new in diffs)
    fixed = [d for d in diffs if d[0].startswith("network.") and d[0].removeprefix("network.") in _SHAPE]
    if ignore_mismatch and not fixed:
        return [f"{name}: state {old!r}, this run {new!r}" for name, old, new in diffs]
    hint = ("the network's shape cannot be changed on resume; train it from scratch (remove train.resume) or use a "
            "new output.dir" if fixed else
            "use another output.dir for a new run, or, to continue this state anyway, set train.resume to its folder "
            "and train.resume_ignore_mismatch = true")
    raise SdLoraError(f"train.resume: {state} was saved by a different run:\n  {listed}\n{hint}")


def save_state(accelerator, output_dir: str | Path, step: int, fingerprint: dict) -> Path:
    """Write the state of `step` crash-safely (see the module docstring); returns its folder."""
    final = checkpoint_dir(output_dir, step)
    partial = final.with_name(f".{final.name}.partial")
    if accelerator.is_main_process:
        _clean_stale(final.parent)
        partial.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(partial))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            _complete(partial, final, {"step": step, **fingerprint})
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)  # never leave half a state behind
        raise
    accelerator.wait_for_everyone()
    return final


def _complete(partial: Path, final: Path, marker: dict) -> None:
    for path in partial.rglob("*"):
        if path.is_file():
            with open(path, "rb+") as f:
                os.fsync(f.fileno())
    atomic_write_text(partial / MARKER, json.dumps(marker, indent=1) + "\n")  # last: the state is complete
    give_umask_modes(partial)
    old = final.with_name(f".{final.name}.old")
    if final.exists():  # the same step saved again (a resumed run): swap, then drop the old one
        os.replace(final, old)
    os.replace(partial, final)
    shutil.rmtree(old, ignore_errors=True)


def _clean_stale(root: Path) -> None:
    """Leftovers of saves that were killed midway (only one run uses an output.dir at a time: see RunLock)."""
    if root.is_dir():
        for path in root.iterdir():
            if path.name.startswith(".step-") and path.name.endswith((".partial", ".old")):
                shutil.rmtree(path, ignore_errors=True)


def _checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    root = Path(output_dir) / "checkpoints"
    found = [(int(m.group(1)), p) for p in root.glob("step-*") if (m := _STEP_DIR.search(p.name)) and p.is_dir()]
    return sorted(found)


def load_matching_state(accelerator, output_dir: str | Path, resume: str, fingerprint: dict,
                        ignore_mismatch: bool) -> Path:
    """Find the state `resume` names, check it belongs to this run, load it; returns its folder."""
    path, marker, skipped = find_checkpoint(output_dir, resume)
    for incomplete in skipped:
        accelerator.print(f"note: skipped the incomplete state {incomplete} (its save was interrupted)")
    for difference in check_fingerprint(path, marker, fingerprint, ignore_mismatch):
        accelerator.print(f"note: resuming despite a difference (train.resume_ignore_mismatch): {difference}")
    check_state_files(path, output_dir)
    try:
        accelerator.load_state(str(path))
    except (RuntimeError, ValueError, KeyError, OSError, EOFError) as e:
        raise SdLoraError(f"train.resume: could not load the state {path}: {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}") from e
    return path


_RANDOM_STATES = "random_states_0.pkl"  # accelerate's RNG state of process 0: it skips a bad one without a word


def check_state_files(path: Path, output_dir: str | Path) -> None:
    """Every tensor file of the state at `path` is whole (safetensors header and size, torch's zip archives with
    their checksums), so a file cut short (disk full, a copy interrupted) is one error naming it and what to do,
    never a traceback, and never a resume that silently skips the random state."""
    import zipfile

    problems = []
    if not (path / _RANDOM_STATES).is_file():
        problems.append((path / _RANDOM_STATES, "missing"))
    for file in sorted(path.iterdir()):
        try:
            if file.suffix == ".safetensors":
                read_tensor_file(file)
            elif file.suffix in (".bin", ".pkl", ".pt"):
                with zipfile.ZipFile(file) as archive:
                    bad = archive.testzip()
                if bad is not None:
                    problems.append((file, f"its entry {bad} fails its checksum"))
        except SdLoraError as e:
            problems.append((file, str(e).removeprefix(f"{file}: ")))
        except (zipfile.BadZipFile, OSError, EOFError) as e:
            problems.append((file, f"not a whole archive ({e}): cut short or damaged"))
    if not problems:
        return
    others = [p for _, p in _checkpoints(output_dir) if p != path and read_marker(p) is not None]
    listed = "\n  ".join(f"{file.name}: {why}" for file, why in problems)
    choice = f"set train.resume to another state (e.g. {others[-1]})" if others else "no other state is left"
    raise SdLoraError(f"train.resume: the state {path} is damaged and cannot be resumed:\n  {listed}\n"
                      f"{choice}, or start fresh: remove train.resume and run with --overwrite (or a new output.dir)")


def read_marker(path: Path) -> dict | None:
    try:
        return json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def find_checkpoint(output_dir: str | Path, resume: str) -> tuple[Path, dict, list[Path]]:
    """The state to resume: (folder, its marker, incomplete folders skipped). 'latest' -> the newest complete state
    under output_dir; otherwise `resume` must be a complete state folder."""
    if resume == "latest":
        found = _checkpoints(output_dir)
        skipped = []
        for _, path in reversed(found):
            marker = read_marker(path)
            if marker is not None:
                return path, marker, skipped
            skipped.append(path)
        where = Path(output_dir) / "checkpoints"
        incomplete = f" ({len(skipped)} incomplete: {', '.join(p.name for p in skipped)})" if skipped else ""
        raise SdLoraError(f"train.resume = 'latest' but {where} holds no complete state{incomplete}; "
                          "set output.save_every_n_steps to make some, or remove train.resume")
    path = Path(resume)
    if not path.is_dir():
        raise SdLoraError(f"train.resume: {resume!r} is not a state folder (expected output.dir/checkpoints/"
                          "step-NNNNNN)")
    marker = read_marker(path)
    if marker is None:
        raise SdLoraError(f"train.resume: {resume!r} is not a complete sd-lora state (no {MARKER}: the save was "
                          "interrupted, or it is another tool's folder); pick another state or train.resume = 'latest'")
    return path, marker, []


def prune(output_dir: str | Path, keep: int, name: str) -> None:
    """Keep the newest `keep` states and intermediate adapter files `{name}-stepNNNNNN.safetensors` (0: keep all).

    Only files of exactly that pattern are touched: `name` is matched literally (a name like 's[v]' is no glob)."""
    if keep <= 0:
        return
    for _, path in _checkpoints(output_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
    pattern = re.compile(re.escape(name) + r"-step\d{6,}\.safetensors")
    adapters = sorted(p for p in Path(output_dir).iterdir() if p.is_file() and pattern.fullmatch(p.name))
    for path in adapters[:-keep]:
        path.unlink(missing_ok=True)
