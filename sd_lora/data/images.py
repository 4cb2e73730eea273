"""Reading user images safely: cheap header probes, truncation checks, EXIF orientation, any mode -> RGB.

Nothing here decodes a whole image unless asked to, and no image larger than `MAX_DECODE_PIXELS` is ever
decoded at full size (JPEGs are decoded at a reduced scale through Pillow's draft mode instead).
"""

from __future__ import annotations

import errno
import math
import os
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

__all__ = ["IMAGE_EXTENSIONS", "MAX_DECODE_PIXELS", "BadImage", "ImageInfo", "probe_image", "load_rgb",
           "to_rgb", "covering_size", "crop_and_resize", "to_tensor"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# 64 MP of RGB is ~190 MB; several data-loading workers decoding such images at once must still fit in memory.
MAX_DECODE_PIXELS = 64_000_000
# Pillow's JPEG draft mode decodes at 1/2, 1/4 or 1/8 scale without ever holding the full-size image.
_JPEG_MAX_DRAFT_SCALE = 8
_EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)


class BadImage(Exception):
    """A file that cannot be used as a training image; the message says why (the caller names the file)."""


@dataclass(frozen=True)
class ImageInfo:
    width: int  # as displayed, i.e. after the EXIF orientation is applied
    height: int
    format: str


def probe_image(path: Path) -> ImageInfo:
    """Read the header only; raise BadImage for empty, non-image, truncated, oversized or unreadable files.

    No pixel data is decoded for a good file, so rejecting a huge image costs nothing (PNG orientation is
    read from the eXIf chunk directly: Pillow's `getexif()` decodes the whole image to find it).
    """
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        if path.is_symlink():
            raise BadImage(f"a broken symbolic link (it points to {os.readlink(path)}, which does not exist); "
                           "fix or remove the link") from None
        raise BadImage("disappeared during the scan") from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise BadImage("a symbolic link loop (the link leads back to itself, never to a file); fix or remove "
                           "the link") from None
        raise BadImage(f"cannot be read ({e.strerror or e})") from None
    if size == 0:
        raise BadImage("empty file (0 bytes)")
    with _open(path) as im:
        fmt = im.format or "?"
        width, height = im.size
        too_big = width * height > MAX_DECODE_PIXELS
        if too_big and not (fmt == "JPEG" and width * height <= MAX_DECODE_PIXELS * _JPEG_MAX_DRAFT_SCALE ** 2):
            raise BadImage(f"too large to decode safely ({width}x{height} = {width * height / 1e6:.0f} MP, limit "
                           f"{MAX_DECODE_PIXELS / 1e6:.0f} MP); downscale it first")
        orientation = _png_orientation(path) if fmt == "PNG" else _orientation(im)
    suspect = _tail_problem(path, fmt, size)
    if suspect:
        _confirm_by_decoding(path, suspect)
    if orientation in _TRANSPOSED_ORIENTATIONS:
        width, height = height, width
    return ImageInfo(width, height, fmt)


def load_rgb(path: Path, min_size: tuple[int, int] | None = None) -> Image.Image:
    """Decode to an RGB image with EXIF orientation applied.

    `min_size` (w, h, displayed orientation) lets large JPEGs decode at a reduced scale that still
    covers it; the result may then be smaller than the size `probe_image` reported.
    """
    with _open(path) as im:
        if im.format == "JPEG" and min_size is not None:
            draft = min_size if _orientation(im) not in _TRANSPOSED_ORIENTATIONS else min_size[::-1]
            im.draft("RGB", draft)
        if im.size[0] * im.size[1] > MAX_DECODE_PIXELS:
            raise BadImage(f"too large to decode safely ({im.size[0]}x{im.size[1]})")
        try:
            im.load()
        except (OSError, SyntaxError, ValueError) as e:
            raise BadImage(f"cannot be decoded ({e})") from e
        return to_rgb(ImageOps.exif_transpose(im))


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB; transparency is composited on white, 16-bit values scaled to 8 bits."""
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        arr = np.asarray(im).astype(np.float64)
        if im.mode != "F":
            arr = arr / 257.0  # 16-bit PNGs open as "I"/"I;16": 65535 maps to 255
        im = Image.fromarray(np.clip(np.rint(arr), 0, 255).astype(np.uint8), "L")
    has_alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
    if has_alpha:
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


def crop_and_resize(im: Image.Image, resized: tuple[int, int], top: int, left: int,
                    target: tuple[int, int]) -> Image.Image:
    """The `target` (w, h) window at (top, left) of the image scaled to `resized` (w, h), in one resample.

    Coordinates refer to `resized` whatever size `im` was decoded at (JPEG draft mode), so the geometry,
    and with it SDXL's crop conditioning, does not depend on how the image was decoded.
    """
    sx, sy = im.width / resized[0], im.height / resized[1]
    box = (left * sx, top * sy, (left + target[0]) * sx, (top + target[1]) * sy)
    return im.resize(target, Image.Resampling.LANCZOS, box=box, reducing_gap=3.0)


def to_tensor(im: Image.Image) -> torch.Tensor:
    """RGB image -> float tensor [3, H, W] in [-1, 1]."""
    arr = torch.from_numpy(np.array(im, dtype=np.uint8, copy=True))
    return arr.permute(2, 0, 1).float().div(127.5).sub(1.0)


def _open(path: Path) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # The size is checked against our own limit; Pillow's warning would only add noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(path)
    except Image.DecompressionBombError as e:
        raise BadImage(f"too large to decode safely ({e})") from e
    except PermissionError as e:
        raise BadImage(f"cannot be read ({e.strerror}); fix its permissions or remove it") from None
    except UnidentifiedImageError as e:
        raise BadImage("not an image Pillow can read (is it a different file type with an image extension?)") from e
    except (OSError, SyntaxError, ValueError, struct.error) as e:
        raise BadImage(f"unreadable header ({e})") from e


def _orientation(im: Image.Image) -> int:
    try:
        return int(im.getexif().get(_EXIF_ORIENTATION, 1))
    except Exception:  # a corrupt EXIF block must not reject an otherwise good image
        return 1


def _png_orientation(path: Path) -> int:
    """The EXIF orientation of a PNG from its eXIf chunk, found by walking the chunk headers (no decoding)."""
    try:
        with open(path, "rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                return 1
            while True:
                head = f.read(8)
                if len(head) < 8:
                    return 1
                length, kind = struct.unpack(">I4s", head)
                if kind == b"IEND":
                    return 1
                if kind == b"eXIf":
                    exif = Image.Exif()
                    exif.load(f.read(length))
                    return int(exif.get(_EXIF_ORIENTATION, 1))
                f.seek(length + 4, os.SEEK_CUR)  # data + CRC
    except Exception:  # a corrupt EXIF block must not reject an otherwise good image
        return 1


def _tail_problem(path: Path, fmt: str, size: int) -> str | None:
    """Why the file's last bytes suggest truncation, if they do; read without decoding anything."""
    with open(path, "rb") as f:
        head = f.read(16)
        f.seek(max(0, size - 1024))
        tail = f.read()
    if fmt == "PNG" and b"IEND" not in tail:
        return "the PNG end marker is missing"
    if fmt in ("JPEG", "MPO") and b"\xff\xd9" not in tail:
        return "the JPEG end marker is missing"
    if fmt == "WEBP" and len(head) >= 8 and struct.unpack("<I", head[4:8])[0] + 8 > size:
        return "shorter than its RIFF header says"
    if fmt == "BMP" and len(head) >= 6 and struct.unpack("<I", head[2:6])[0] > size:
        return "shorter than its header says"
    return None


def _confirm_by_decoding(path: Path, suspect: str) -> None:
    """Decode a suspicious file (JPEGs at 1/8 scale): data appended after the image, as phones write for
    motion photos, hides the end marker of a perfectly good file."""
    with _open(path) as im:
        if im.format == "JPEG":
            im.draft(im.mode, (max(1, im.width // _JPEG_MAX_DRAFT_SCALE), max(1, im.height // _JPEG_MAX_DRAFT_SCALE)))
        try:
            im.load()
        except (OSError, SyntaxError, ValueError, struct.error) as e:
            raise BadImage(f"truncated or corrupt ({suspect}: {e})") from e


def covering_size(width: int, height: int, target: tuple[int, int]) -> tuple[int, int]:
    """Size (w, h) of the image scaled to just cover `target`, never below it by rounding."""
    s = max(target[0] / width, target[1] / height)
    return max(target[0], math.floor(width * s + 0.5)), max(target[1], math.floor(height * s + 0.5))


def load_mask(path: Path, alpha: bool) -> Image.Image | None:
    """A loss mask as a grayscale image (255 counts fully, 0 not at all): the image's own alpha channel
    (`alpha`; None when it has none) or a mask file, EXIF-rotated like the images."""
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if alpha:
            if "A" not in im.getbands() and not (im.mode == "P" and "transparency" in im.info):
                return None
            return im.convert("RGBA").getchannel("A")
        return im.convert("L")


def mask_tensor(im: Image.Image) -> torch.Tensor:
    """[1, H, W] float in [0, 1]."""
    return torch.from_numpy(np.asarray(im, dtype=np.float32) / 255.0)[None]
