"""Experiment trackers through accelerate (TensorBoard, wandb): which one, its run config, sample grids."""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["tracker_name", "init_trackers", "log_grid"]


def tracker_name(log_with: str) -> str | None:
    """'auto' is TensorBoard when installed; 'none' is no tracker (metrics.jsonl is written either way)."""
    if log_with == "auto":
        log_with = "tensorboard" if importlib.util.find_spec("tensorboard") else "none"
    return None if log_with == "none" else log_with


def init_trackers(accelerator, cfg, out_dir: Path) -> None:
    from sd_lora.config.load import dump_dict

    from sd_lora.fileio import printable

    flat = {f"{s}.{k}": v if isinstance(v, (int, float, bool)) else printable(str(v))
            for s, values in dump_dict(cfg).items() for k, v in values.items()}
    logs = out_dir / "logs"  # wandb's run folder goes beside TensorBoard's, not into the CWD
    logs.mkdir(parents=True, exist_ok=True)
    accelerator.init_trackers("sd-lora", config=flat, init_kwargs={"wandb": {"dir": str(logs)}})


def log_grid(accelerator, path: Path, step: int) -> None:
    """The sample grid at `path` to every active tracker."""
    import numpy as np
    from PIL import Image

    grid = np.asarray(Image.open(path).convert("RGB"))
    for tracker in accelerator.trackers:
        if tracker.name == "tensorboard":
            tracker.log_images({"samples": grid[None]}, step=step, dataformats="NHWC")
        elif tracker.name == "wandb":
            tracker.log_images({"samples": [grid]}, step=step)
