"""Caption sidecar files read and written back the way they were: encoding, BOM, line endings, final newline.

A caption edited by sd-lora must not turn a Windows user's CRLF, Windows-1252 file into something their editor or
other trainers read differently, so every edit keeps the file's own format; new files are plain UTF-8.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sd_lora.errors import SdLoraError
from sd_lora.fileio import atomic_write_bytes

__all__ = ["CaptionFile", "read_caption_file", "write_caption_file", "caption_path"]

_UTF8_BOM = b"\xef\xbb\xbf"
# What Windows editors write when text is not UTF-8; Latin-1 decodes any byte, so the last one never fails.
_FALLBACK_ENCODINGS = ("cp1252", "latin-1")


@dataclass(frozen=True)
class CaptionFile:
    text: str  # without the final newline; inner newlines as "\n"
    encoding: str = "utf-8"
    bom: bool = False
    newline: str = "\n"
    final_newline: bool = False

    def encode(self, text: str) -> bytes:
        """`text` in this file's format (one line per "\\n" in `text`)."""
        body = text.replace("\r\n", "\n").replace("\n", self.newline)
        if self.final_newline and body:
            body += self.newline
        try:
            data = body.encode(self.encoding)
        except UnicodeEncodeError:  # a new character the old encoding cannot hold: UTF-8 is the lossless choice
            data = body.encode("utf-8")
        return (_UTF8_BOM if self.bom else b"") + data


def caption_path(image: Path, extension: str = ".txt") -> Path:
    return image.with_suffix(extension)


def read_caption_file(path: Path) -> CaptionFile:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise SdLoraError(f"{path}: cannot read the caption file ({e.strerror or e}); fix its permissions") from None
    bom = raw.startswith(_UTF8_BOM)
    raw = raw[len(_UTF8_BOM):] if bom else raw
    text = encoding = None
    for encoding in ("utf-8",) + _FALLBACK_ENCODINGS:
        try:
            text = raw.decode(encoding)
            break
        except UnicodeDecodeError:
            continue
    newline = "\r\n" if "\r\n" in text else ("\r" if "\r" in text else "\n")
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    final = text.endswith("\n")
    return CaptionFile(text.rstrip("\n") if final else text, encoding, bom, newline, final)


def write_caption_file(path: Path, text: str, like: CaptionFile | None = None) -> Path:
    """Atomically write `text`, in the format of `like` (the file as it was read) or as plain UTF-8."""
    return atomic_write_bytes(path, (like or CaptionFile("")).encode(text))
