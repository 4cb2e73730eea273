"""Prior preservation: fill regularisation folders with generated class images before training.

Generated images are saved (atomically) into the folder with a caption file holding their prompt, so the
next run finds them, counts them, and generates nothing.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from PIL import Image

from sd_lora.config.data import DataConfig
from sd_lora.data.images import IMAGE_EXTENSIONS
from sd_lora.data.scan import ScanReport, scan_dataset
from sd_lora.fileio import atomic_path, atomic_write_text

__all__ = ["class_images_needed", "prepare_class_images"]

log = logging.getLogger("sd_lora.data")
_NAME = "class_{:05d}"


def class_images_needed(scan: ScanReport) -> int:
    """How many class images `prepare_class_images` would generate (0: no model call needed)."""
    return sum(s.missing_class_images for s in scan.subsets)


def prepare_class_images(cfg: DataConfig, scan: ScanReport,
                         generate: Callable[[list[str], list[int]], list[Image.Image]], *,
                         seed: int = 0, batch_size: int = 4) -> ScanReport:
    """Generate the missing class images of every regularisation subset with `generate(prompts, seeds)`.

    Image i of a folder uses seed `seed + i`, so a run can be reproduced. Returns the scan to train with:
    a fresh one when anything was generated, else `scan` itself.
    """
    made = 0
    for sub in scan.subsets:
        missing = sub.missing_class_images
        if not missing:
            continue
        sub.spec.dir.mkdir(parents=True, exist_ok=True)
        indices = _free_indices(sub.spec.dir, missing)
        log.warning("%s: generating %d class image(s) with prompt %r into %s", sub.spec.where, missing,
                    sub.spec.class_prompt, sub.spec.dir)
        for start in range(0, len(indices), batch_size):
            chunk = indices[start:start + batch_size]
            images = generate([sub.spec.class_prompt] * len(chunk), [seed + i for i in chunk])
            if len(images) != len(chunk):
                raise ValueError(f"generate returned {len(images)} images for {len(chunk)} prompts")
            for index, image in zip(chunk, images):
                _save(sub.spec.dir, index, image, sub.spec.class_prompt, sub.spec.caption_extension)
                made += 1
    return scan_dataset(cfg) if made else scan


def _free_indices(folder: Path, count: int) -> list[int]:
    taken = {p.stem for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS}
    out, i = [], 0
    while len(out) < count:
        if _NAME.format(i) not in taken:
            out.append(i)
        i += 1
    return out


def _save(folder: Path, index: int, image: Image.Image, prompt: str, caption_extension: str) -> None:
    stem = _NAME.format(index)
    atomic_write_text(folder / f"{stem}{caption_extension}", prompt)
    # The image goes last: a run cut off in between leaves a stray caption file, never an uncaptioned image.
    with atomic_path(folder / f"{stem}.png") as tmp:
        image.convert("RGB").save(tmp, format="PNG")
