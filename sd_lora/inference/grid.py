"""Contact sheets: images in a grid with a caption under each, or row and column headings (sweeps)."""

from __future__ import annotations

import json
import math
from typing import Sequence

from PIL import Image, ImageDraw, ImageFont

__all__ = ["make_grid"]

_PAD = 4
_MIN_LABEL_WIDTH = 96  # tiny test images are 32 px; captions still need room


def _font(size: int = 12):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the bitmap font
        return ImageFont.load_default()


def _wrap(text: str, font, width: int, max_lines: int = 3) -> list[str]:
    lines, current = [], ""
    for char in text:
        if font.getlength(current + char) > width - 2 * _PAD and current:
            lines.append(current)
            current = char.lstrip()
        else:
            current += char
    lines.append(current)
    if len(lines) > max_lines:
        lines = lines[:max_lines]
        lines[-1] = lines[-1][:-1] + "…"
    return lines


def _line_height(font) -> int:
    left, top, right, bottom = font.getbbox("Ag")
    return bottom + 2


def _band(texts: Sequence[str], font, width: int) -> int:
    lines = max((len(_wrap(t, font, width)) for t in texts), default=0)
    return lines * _line_height(font) + 2 * _PAD if lines else 0


def _draw(draw, text: str, font, box: tuple[int, int, int, int]) -> None:
    x0, y0, x1, _ = box
    for i, line in enumerate(_wrap(text, font, x1 - x0)):
        draw.text((x0 + _PAD, y0 + _PAD + i * _line_height(font)), line, fill=(0, 0, 0), font=font)


def make_grid(images: Sequence[Image.Image], labels: Sequence[str] | None = None, *, cols: int | None = None,
              row_labels: Sequence[str] | None = None, col_labels: Sequence[str] | None = None) -> Image.Image:
    """One image holding `images` row by row (`cols` per row; default near-square), white background.

    `labels` caption each image; `row_labels` / `col_labels` head rows and columns (adapter × scale sweeps).
    The layout is kept in `grid.info["grid"]` (JSON: cell boxes and labels), which `save_png` can store.
    """
    if not images:
        raise ValueError("make_grid needs at least one image")
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    font = _font()
    img_w, img_h = max(im.width for im in images), max(im.height for im in images)
    cell_w = max(img_w, _MIN_LABEL_WIDTH) if (labels or col_labels) else img_w
    caption_h = _band(labels or [], font, cell_w)
    header_h = _band(col_labels or [], font, cell_w)
    left_w = max((int(font.getlength(t)) + 2 * _PAD for t in row_labels), default=0) if row_labels else 0
    cell_h = img_h + caption_h
    grid = Image.new("RGB", (left_w + cols * cell_w, header_h + rows * cell_h), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    boxes = []
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        x, y = left_w + c * cell_w + (cell_w - im.width) // 2, header_h + r * cell_h
        grid.paste(im.convert("RGB"), (x, y))
        boxes.append([x, y, x + im.width, y + im.height])
        if labels:
            _draw(draw, labels[i], font, (left_w + c * cell_w, y + img_h, left_w + (c + 1) * cell_w, y + cell_h))
    for c, text in enumerate(col_labels or []):
        _draw(draw, text, font, (left_w + c * cell_w, 0, left_w + (c + 1) * cell_w, header_h))
    for r, text in enumerate(row_labels or []):
        _draw(draw, text, font, (0, header_h + r * cell_h + img_h // 2 - _line_height(font) // 2, left_w, 0))
    grid.info["grid"] = json.dumps({"cols": cols, "rows": rows, "boxes": boxes, "labels": list(labels or []),
                                    "row_labels": list(row_labels or []), "col_labels": list(col_labels or [])})
    return grid
