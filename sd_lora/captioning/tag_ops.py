"""Caption operations over a folder of `.txt` sidecars: tag frequencies, find/replace, remove/rename tags, dedupe,
sort, prepend a trigger; planned as a list of changes (shown as a diff) before anything is written, applied
atomically with the originals copied to a backup folder, and undone from that folder.

Tags are the comma-separated parts of a caption (kohya's convention); an operation rewrites a caption only when it
changes a tag, so a natural-language caption nobody asked to touch keeps its exact text.
"""

from __future__ import annotations

import difflib
import json
import re
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from sd_lora.captioning.textfile import CaptionFile, read_caption_file, write_caption_file
from sd_lora.data.layout import list_images
from sd_lora.errors import SdLoraError
from sd_lora.fileio import atomic_write_bytes, atomic_write_text

__all__ = ["CaptionChange", "caption_files", "split_caption", "join_tags", "tag_frequencies", "replace_text",
           "remove_tags", "rename_tag", "dedupe_tags", "sort_tags", "prepend_trigger", "plan_edit", "format_diff",
           "apply_changes", "undo_last", "BACKUP_DIR"]

BACKUP_DIR = ".sd-lora-caption-backups"
_MANIFEST = "manifest.json"


@dataclass(frozen=True)
class CaptionChange:
    path: Path
    before: str
    after: str
    original: CaptionFile  # the file as read: its encoding and line endings are written back


def caption_files(folder: str | Path, extension: str = ".txt") -> list[Path]:
    """The caption sidecars of the images directly in `folder` (same stem, `extension`), sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SdLoraError(f"{folder}: not a folder; give the dataset folder holding the images and caption files")
    return [p for p in (img.with_suffix(extension) for img in list_images(folder)) if p.is_file()]


def split_caption(text: str) -> list[str]:
    return [t.strip() for t in text.replace("\n", ",").split(",") if t.strip()]


def join_tags(tags: Iterable[str]) -> str:
    return ", ".join(tags)


def tag_frequencies(captions: Iterable[str]) -> list[tuple[str, int]]:
    """(tag, number of captions holding it), most frequent first, ties by name."""
    counts = Counter(tag for text in captions for tag in dict.fromkeys(split_caption(text)))
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


# Each operation maps one caption to its new text (the same string when nothing changes).

def replace_text(find: str, replacement: str, regex: bool = False) -> Callable[[str], str]:
    """Substring (or regular-expression) replacement over the whole caption text."""
    if not find:
        raise SdLoraError("--find must not be empty")
    try:
        pattern = re.compile(find if regex else re.escape(find))
    except re.error as e:
        raise SdLoraError(f"--find {find!r} is not a valid regular expression ({e}); drop --regex to match it "
                          "literally") from None
    if regex:
        def sub(text: str) -> str:
            try:
                return pattern.sub(replacement, text)
            except re.error as e:  # e.g. \2 with one group: only found once a caption matches
                raise SdLoraError(f"--replace {replacement!r}: {e}") from None
        return sub
    return lambda text: pattern.sub(lambda _: replacement, text)  # literal: no group references or escapes


def _tag_op(edit: Callable[[list[str]], list[str]]) -> Callable[[str], str]:
    def apply(text: str) -> str:
        tags = split_caption(text)
        new = edit(tags)
        return text if new == tags else join_tags(new)
    return apply


def remove_tags(tags: Iterable[str]) -> Callable[[str], str]:
    drop = set(tags)
    return _tag_op(lambda ts: [t for t in ts if t not in drop])


def rename_tag(old: str, new: str) -> Callable[[str], str]:
    """Rename tag `old` to `new` (a tag already holding `new` is not doubled)."""
    return _tag_op(lambda ts: list(dict.fromkeys(new if t == old else t for t in ts)) if old in ts else ts)


def dedupe_tags() -> Callable[[str], str]:
    return _tag_op(lambda ts: list(dict.fromkeys(ts)))


def sort_tags(keep: int = 0) -> Callable[[str], str]:
    """Sort tags alphabetically after the first `keep` (the trigger and other keep_tokens stay in front)."""
    return _tag_op(lambda ts: ts[:keep] + sorted(ts[keep:], key=str.casefold))


def prepend_trigger(trigger: str) -> Callable[[str], str]:
    """Put `trigger` first; moved there when it is elsewhere in the caption, not doubled."""
    if not trigger.strip() or "," in trigger:
        raise SdLoraError(f"trigger {trigger!r}: give one non-empty tag without commas")
    trigger = trigger.strip()
    return _tag_op(lambda ts: [trigger] + [t for t in ts if t != trigger])


def plan_edit(files: Iterable[Path], operation: Callable[[str], str]) -> list[CaptionChange]:
    """The captions `operation` would change (nothing is written)."""
    changes = []
    for path in files:
        original = read_caption_file(path)
        after = operation(original.text)
        if after != original.text:
            changes.append(CaptionChange(path, original.text, after, original))
    return changes


def format_diff(changes: Iterable[CaptionChange]) -> str:
    """A unified diff of every change, one file after another."""
    out = []
    for c in changes:
        out.extend(difflib.unified_diff(c.before.split("\n"), c.after.split("\n"), f"a/{c.path.name}",
                                        f"b/{c.path.name}", lineterm=""))
    return "\n".join(out)


def apply_changes(changes: list[CaptionChange], folder: str | Path, operation_name: str) -> Path | None:
    """Copy every file about to change into a new backup folder, then write the changes (each atomically).

    Returns the backup folder (None when there was nothing to change); `undo_last` restores from it.
    """
    if not changes:
        return None
    folder = Path(folder)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    root = folder / BACKUP_DIR
    # The name sorts in time order; a second run within the same second gets the next counter.
    n = len(list(root.glob(f"{stamp}-*"))) if root.is_dir() else 0
    backup = root / f"{stamp}-{n:03d}"
    backup.mkdir(parents=True)
    for c in changes:
        shutil.copy2(c.path, backup / c.path.name)
    atomic_write_text(backup / _MANIFEST, json.dumps({
        "operation": operation_name, "files": [c.path.name for c in changes]}, indent=1))
    for c in changes:
        write_caption_file(c.path, c.after, like=c.original)
    return backup


def undo_last(folder: str | Path) -> tuple[Path, list[Path]]:
    """Restore the files of the newest backup folder byte for byte, then remove that backup.

    Returns (the backup used, the files restored).
    """
    folder = Path(folder)
    root = folder / BACKUP_DIR
    backups = sorted(p for p in root.iterdir() if (p / _MANIFEST).is_file()) if root.is_dir() else []
    if not backups:
        raise SdLoraError(f"{folder}: no caption backups to undo (they live in {root}, one per applied operation)")
    backup = backups[-1]
    manifest = json.loads((backup / _MANIFEST).read_text(encoding="utf-8"))
    restored = []
    for name in manifest["files"]:
        restored.append(atomic_write_bytes(folder / name, (backup / name).read_bytes()))
    shutil.rmtree(backup)
    return backup, restored
