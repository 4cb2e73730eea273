"""The base model's hash, recorded in images and training samples (AUTOMATIC1111's `Model hash` is its first
10 hex digits): SHA-256 of a single-file checkpoint, or of a diffusers folder's files (relative names and
contents, in name order). Computed once per location and process."""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

__all__ = ["base_model_hash"]


@functools.lru_cache(maxsize=8)
def base_model_hash(location: str) -> str | None:
    """Hex SHA-256 of the model at `location`, or None when it is not a local file or folder."""
    path = Path(location)
    if path.is_file():
        files = [(path.name, path)]
    elif path.is_dir():
        files = sorted((p.relative_to(path).as_posix(), p) for p in path.rglob("*")
                       if p.is_file() and not any(part.startswith(".") for part in p.relative_to(path).parts))
    else:
        return None
    digest = hashlib.sha256()
    for name, file in files:
        if path.is_dir():
            digest.update(name.encode() + b"\0")
        with open(file, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()
