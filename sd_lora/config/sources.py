"""What `model.pretrained` names: a built-in model, a local path (folder or single file), or a hub id.

One rule, used where the config is read (to resolve relative paths) and where the model is loaded: a value
is a path only if it exists or looks like one; anything else of the form `org/name` is a hub id. `org/name`
looks like a path when `org` is a local folder and `org/name` is not a cached hub model: a mistyped
`models/tiny-sdx` is then reported as a missing path, not tried as a hub id.
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
    base = Path.cwd() if base_dir is None or path.is_absolute() else base_dir
    if (base / path).exists():
        return True
    return value.count("/") == 1 and (base / path.parts[0]).is_dir() and not _cached_hub_model(value)


def _cached_hub_model(repo_id: str) -> bool:
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(repo_id, "model_index.json"), str)
    except Exception:  # not a valid repo id, or no hub client: not a cached hub model
        return False
