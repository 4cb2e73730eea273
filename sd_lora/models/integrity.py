"""Proof that a loaded model holds real weights everywhere.

diffusers builds a model from its config on the meta device and then fills it from the weight file; a parameter
the file does not hold (a shortened or hand-edited file, a config of a bigger model beside smaller weights) is left
on the meta device without an error, and the run would fail much later with an unclear message. `require_filled`
turns that into one error naming the module and the file it was read from.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import torch

from sd_lora.errors import SdLoraError

__all__ = ["unfilled", "require_filled", "require_filled_folder"]


def unfilled(module: torch.nn.Module) -> list[str]:
    """Names of the parameters and buffers of `module` still on the meta device (never given a value)."""
    return [n for n, p in [*module.named_parameters(), *module.named_buffers()] if p.is_meta]


def require_filled(modules: Mapping[str, object], source: str, files: Mapping[str, str] | None = None) -> None:
    """Raise one SdLoraError for the first module of `modules` (name -> model; non-modules are skipped) that has
    weights left on the meta device; `files` names where each module was read from (else `source`)."""
    for name, module in modules.items():
        if not isinstance(module, torch.nn.Module):
            continue
        missing = unfilled(module)
        if missing:
            shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
            where = (files or {}).get(name, source)
            raise SdLoraError(f"model.pretrained: {where} lacks weights of the {name}: {shown}; the checkpoint is "
                              "incomplete (cut short or edited) or its config describes a bigger model than the "
                              "weights; re-download or re-convert it")


def require_filled_folder(components: Mapping[str, object], folder: str | Path) -> None:
    """`require_filled` for a diffusers folder: each module is named with its weight file(s) in `folder`."""
    folder = Path(folder)
    files = {}
    for name in components:
        found = sorted(p.name for p in (folder / name).glob("*.safetensors")) if (folder / name).is_dir() else []
        found = found or (sorted(p.name for p in (folder / name).glob("*.bin")) if (folder / name).is_dir() else [])
        files[name] = ", ".join(str(folder / name / f) for f in found) or str(folder / name)
    require_filled(components, str(folder), files)
