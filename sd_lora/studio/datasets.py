"""The datasets page's library side: the scan's plan (the text `--dry-run` prints), captions read and edited
in place (encoding, BOM and line ending kept), find/replace of a tag across a folder, tag frequencies."""

from __future__ import annotations

import io
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from sd_lora.data.images import IMAGE_EXTENSIONS
from sd_lora.errors import SdLoraError
from sd_lora.fileio import atomic_write_bytes, printable

__all__ = ["Caption", "read_caption", "write_caption", "folder_plan", "images_in", "subfolders", "tag_counts",
           "replace_tag", "thumbnail", "split_tags", "unaddressable"]

_BOM = b"\xef\xbb\xbf"


@dataclass
class Caption:
    text: str
    encoding: str  # utf-8 or cp1252 (how the training scan reads a non-UTF-8 file)
    bom: bool
    newline: str  # the file's line ending, kept on write
    trailing: bool  # ended with a line ending


def read_caption(path: Path) -> Caption:
    raw = path.read_bytes() if path.is_file() else b""
    bom = raw.startswith(_BOM)
    body = raw[len(_BOM):] if bom else raw
    try:
        text, encoding = body.decode("utf-8"), "utf-8"
    except UnicodeDecodeError:
        text, encoding = body.decode("cp1252", errors="replace"), "cp1252"
    newline = "\r\n" if "\r\n" in text else "\n"
    trailing = text.endswith(("\n", "\r"))
    return Caption(text.replace("\r\n", "\n").rstrip("\n"), encoding, bom, newline, trailing)


def write_caption(path: Path, text: str) -> Caption:
    """Replace the caption text atomically, keeping the file's encoding, BOM, line ending and final newline."""
    old = read_caption(path)
    body = text.replace("\r\n", "\n").rstrip("\n")
    body = body.replace("\n", old.newline) + (old.newline if old.trailing else "")
    try:
        data = body.encode(old.encoding)
    except UnicodeEncodeError as e:
        raise SdLoraError(f"{path.name} is {old.encoding} text and cannot hold {text[e.start:e.end]!r}; re-save the "
                          "file as UTF-8 first, or leave that character out") from None
    atomic_write_bytes(path, (_BOM if old.bom else b"") + data)
    return read_caption(path)


def images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if _addressable(p) and p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)


def subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _addressable(p) and p.is_dir() and not p.name.startswith("."))


def unaddressable(folder: Path) -> list[str]:
    """Entries whose name is not UTF-8 (surrogate-escaped): no URL can name them, so the page lists them as
    skipped (printable, bytes as \\xNN) instead of failing to render."""
    return sorted(printable(p.name) for p in folder.iterdir() if not _addressable(p))


def _addressable(path: Path) -> bool:
    return printable(path.name) == path.name


def folder_plan(folder: Path, resolution: int = 512, batch_size: int = 1, repeats: int = 1) -> tuple[str, list[str]]:
    """(plan text, warnings) exactly as `sd-lora train --dry-run` prints them for this folder."""
    from sd_lora.config.load import config_from_dict
    from sd_lora.data import format_plan, scan_dataset
    from sd_lora.train.plan import plan_for

    cfg = config_from_dict({"data": {"dir": str(folder), "resolution": resolution, "num_repeats": repeats},
                            "train": {"batch_size": batch_size, "max_steps": 1000}}, "the datasets page")
    scan = scan_dataset(cfg.data)
    return format_plan(plan_for(cfg, scan)), list(scan.warnings)


def split_tags(text: str) -> list[str]:
    return [t.strip() for t in text.replace("\n", ",").split(",") if t.strip()]


def tag_counts(folder: Path, extension: str = ".txt") -> Counter:
    counts: Counter = Counter()
    for image in images_in(folder):
        caption = image.with_suffix(extension)
        if caption.is_file():
            counts.update(dict.fromkeys(split_tags(read_caption(caption).text), 1))
    return counts


def replace_tag(folder: Path, old: str, new: str, extension: str = ".txt") -> int:
    """Replace the comma-separated tag `old` by `new` (empty: remove it) in every caption of the folder; returns
    how many files changed. Other tags and the files' separators stay as they were."""
    old, new = old.strip(), new.strip()
    if not old:
        raise SdLoraError("find: name the tag to replace")
    changed = 0
    for image in images_in(folder):
        path = image.with_suffix(extension)
        if not path.is_file():
            continue
        caption = read_caption(path)
        lines = []
        for line in caption.text.split("\n"):
            parts = line.split(",")
            kept = []
            for part in parts:
                if part.strip() == old:
                    if new:
                        kept.append(part.replace(old, new))
                else:
                    kept.append(part)
            if kept and kept[0] != parts[0] and kept[0].startswith(" "):
                kept[0] = kept[0].lstrip()
            lines.append(",".join(kept))
        text = "\n".join(lines)
        if text != caption.text:
            write_caption(path, text)
            changed += 1
    return changed


def thumbnail(path: Path, size: int = 160) -> bytes:
    from PIL import Image, ImageOps

    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        im.thumbnail((size, size))
        buf = io.BytesIO()
        im.convert("RGB").save(buf, format="JPEG", quality=85)
        return buf.getvalue()
