"""Atomic file writes: a crash mid-write never leaves a broken file where a good one was."""

from __future__ import annotations

import contextlib
import glob
import os
import tempfile
from pathlib import Path
from typing import Iterator

from sd_lora.errors import SdLoraError

__all__ = ["atomic_path", "atomic_write_text", "atomic_write_bytes", "current_umask", "give_umask_modes", "write_errors",
           "remove_stale_temporaries", "is_write_failure", "write_failure_reason", "STALE_AFTER_S", "printable"]

# A temporary file or folder of ours not written to for this long belongs to a process that died (kill -9, power
# cut): no live writer leaves its file untouched that long (a write, even of gigabytes, changes the mtime).
STALE_AFTER_S = 300


def printable(text: str) -> str:
    """`text` (a path or a value holding one) as valid Unicode: a file name that is not UTF-8 comes from the OS
    surrogate-escaped, which UTF-8 writers (logs, metadata, TensorBoard) refuse; its bytes are shown as \\xNN."""
    try:
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    except UnicodeEncodeError:  # a lone surrogate that stands for no byte
        return text.encode("utf-8", "backslashreplace").decode("utf-8")


def current_umask() -> int:
    """The process umask, read without changing it where Linux tells it (os.umask can only set-and-return)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def give_umask_modes(path: str | Path) -> None:
    """Give `path` (and, for a folder, everything in it) the modes a plain open()/mkdir() would have: temporary
    files (mkstemp) and safetensors' files are 0600, which services running as another user cannot read."""
    mask = current_umask()
    path = Path(path)
    items = [path, *path.rglob("*")] if path.is_dir() else [path]
    for item in items:
        os.chmod(item, (0o777 if item.is_dir() else 0o666) & ~mask)


def remove_stale_temporaries(target: str | Path) -> list[Path]:
    """Remove `.NAME.*.tmp` leftovers beside `target` (what atomic_path and the folder writers make) that no process
    has touched for STALE_AFTER_S seconds; returns what was removed."""
    import shutil
    import time

    target = Path(target)
    if not target.parent.is_dir():
        return []
    removed, now = [], time.time()
    for path in target.parent.glob(f".{glob.escape(target.name)}.*.tmp"):
        try:
            if now - path.lstat().st_mtime < STALE_AFTER_S:
                continue
            shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
            removed.append(path)
        except OSError:
            continue  # another process's, or already gone
    return removed


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `target`; on success it replaces `target` in one rename.

    On any exception the temporary file is removed and `target` is left as it was.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        give_umask_modes(tmp_path)
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def atomic_write_bytes(target: str | Path, data: bytes) -> Path:
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)
    return Path(target)


def atomic_write_text(target: str | Path, text: str) -> Path:
    """UTF-8; a file name in `text` that is not UTF-8 (surrogate-escaped) is written as its bytes on disk, so the
    text still names that file."""
    return atomic_write_bytes(target, text.encode("utf-8", "surrogateescape"))


def is_write_failure(e: BaseException) -> bool:
    """An OSError, or one reported by a Rust-backed library as its own type (safetensors: 'I/O error: ...',
    tokenizers: '... (os error 28)')."""
    from safetensors import SafetensorError

    return isinstance(e, OSError) or (isinstance(e, SafetensorError) and "I/O error" in str(e)) or \
        "(os error " in str(e)


def write_failure_reason(e: BaseException) -> str:
    """'No space left on device (/out/x.tmp)': the reason without Python's [Errno N] prefix, and the path."""
    reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).rsplit("I/O error: ", 1)[-1]
    return reason + (f" ({e.filename})" if getattr(e, "filename", None) else "")


@contextlib.contextmanager
def write_errors(what: str, then: str = "") -> Iterator[None]:
    """Turn a failed write (disk full, file too large, permission denied) into one clear error. The writes inside
    are atomic, so everything saved before is still intact."""
    from safetensors import SafetensorError  # safetensors reports its I/O errors as its own type

    try:
        yield
    except (OSError, SafetensorError) as e:
        if not is_write_failure(e):
            raise
        reason = e.strerror if isinstance(e, OSError) and e.strerror else str(e).rsplit("I/O error: ", 1)[-1]
        where = f" ({e.filename})" if getattr(e, "filename", None) else ""
        raise SdLoraError(f"could not write {what}: {reason}{where}. The files saved before are intact; "
                          f"free some space or fix the permissions{then}.") from e
