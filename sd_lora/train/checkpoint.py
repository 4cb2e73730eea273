"""Resumable training state through accelerate, holding only what training changes.

A checkpoint folder `{output.dir}/checkpoints/step-NNNNNN/` holds accelerate's optimiser, RNG and
custom states plus one `adapter_<component>.safetensors` per adapted model — never the frozen base
(accelerate would save whole models; the hooks below swap in the adapter tensors).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch
from peft import get_peft_model_state_dict, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from sd_lora.errors import SdLoraError

__all__ = ["TrainingState", "install_adapter_only_hooks", "checkpoint_dir", "find_checkpoint", "prune"]

_STEP_DIR = re.compile(r"step-(\d+)$")


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
                save_file({k: v.detach().contiguous().cpu() for k, v in state.items()},
                          str(Path(output_dir) / f"adapter_{name}.safetensors"))
        weights.clear()  # nothing else of the models is written

    def load_hook(models, input_dir):
        for name, model in zip(names, list(models)):
            path = Path(input_dir) / f"adapter_{name}.safetensors"
            if not path.is_file():
                raise SdLoraError(f"train.resume: {input_dir} has no {path.name}; it is not a state of this run's "
                                  "network (was train_text_encoder changed?)")
            result = set_peft_model_state_dict(accelerator.unwrap_model(model), load_file(str(path)))
            if getattr(result, "unexpected_keys", None):
                raise SdLoraError(f"train.resume: {path} does not match this network "
                                  f"(unexpected {result.unexpected_keys[:3]}…)")
        models.clear()  # accelerate must not look for full model files

    accelerator.register_save_state_pre_hook(save_hook)
    accelerator.register_load_state_pre_hook(load_hook)


def checkpoint_dir(output_dir: str | Path, step: int) -> Path:
    return Path(output_dir) / "checkpoints" / f"step-{step:06d}"


def _checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    root = Path(output_dir) / "checkpoints"
    found = [(int(m.group(1)), p) for p in root.glob("step-*") if (m := _STEP_DIR.search(p.name)) and p.is_dir()]
    return sorted(found)


def find_checkpoint(output_dir: str | Path, resume: str) -> Path:
    """'latest' -> the newest checkpoint under output_dir; otherwise `resume` must be a checkpoint folder."""
    if resume == "latest":
        found = _checkpoints(output_dir)
        if not found:
            raise SdLoraError(f"train.resume = 'latest' but {Path(output_dir) / 'checkpoints'} holds no checkpoint; "
                              "set output.save_every_n_steps to make some, or remove train.resume")
        return found[-1][1]
    path = Path(resume)
    if not (path.is_dir() and any(path.glob("adapter_*.safetensors"))):
        raise SdLoraError(f"train.resume: {resume!r} is not a checkpoint folder (expected output.dir/checkpoints/"
                          "step-NNNNNN with adapter_*.safetensors)")
    return path


def prune(output_dir: str | Path, keep: int, adapter_glob: str) -> None:
    """Keep the newest `keep` checkpoints and intermediate adapter files (0: keep everything)."""
    if keep <= 0:
        return
    for _, path in _checkpoints(output_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)
    adapters = sorted(Path(output_dir).glob(adapter_glob))
    for path in adapters[:-keep]:
        path.unlink(missing_ok=True)
