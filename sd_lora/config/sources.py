"""What `model.pretrained` names: a built-in model, a local path (folder or single file), or a hub id.

One rule, used where the config is read (to resolve relative paths) and where the model is loaded: a value
is a path only if it exists or looks like one; anything else of the form `org/name` is a hub id.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["MODEL_FILE_SUFFIXES", "looks_like_path"]

MODEL_FILE_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def looks_like_path(value: str, base_dir: Path | None = None) -> bool:
    """True for an existing path (relative to `base_dir`, default the CWD) or one written as a path: starting with
    '.', '/' or '~', holding a backslash or more than one '/', or ending in a checkpoint suffix."""
    if value.startswith("builtin:"):
        return False
    if value.startswith((".", "/", "~")) or value.endswith(MODEL_FILE_SUFFIXES) or "\\" in value or value.count("/") > 1:
        return True
    path = Path(value).expanduser()
    return path.exists() if base_dir is None or path.is_absolute() else (base_dir / path).exists()
