"""Loss masks from a text prompt with CLIPSeg (transformers), written where `data.mask_dir` reads them: one 8-bit
grayscale PNG per image, same stem, the image's displayed size (white = the pixels that count in the loss).

A contact sheet (image | mask | overlay per row) lets a user check a whole folder at a glance before training.
"""

from __future__ import annotations

import glob
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageOps

from sd_lora.captioning.captioner import DEFAULT_MASK_MODEL, pick_device
from sd_lora.captioning.hub import ModelFiles, resolve_model
from sd_lora.data.images import BadImage, load_rgb
from sd_lora.data.layout import list_images
from sd_lora.errors import SdLoraError
from sd_lora.fileio import atomic_path
from sd_lora.logs import quiet_libraries

__all__ = ["MaskSettings", "MaskReport", "ClipSegMasker", "load_masker", "make_masks", "contact_sheet",
           "DEFAULT_MASK_MODEL"]


@dataclass(frozen=True)
class MaskSettings:
    prompts: tuple[str, ...]  # a pixel counts when any prompt matches it
    model: str = DEFAULT_MASK_MODEL
    revision: str | None = None
    device: str = "auto"
    threshold: float | None = None  # None: soft mask (the probability as gray); else 0/255 at this cut
    floor: float = 0.0  # lowest weight anywhere, e.g. 0.1 keeps some loss on the background
    invert: bool = False  # mask everything but the prompt (e.g. prompt "watermark")
    batch_size: int = 4

    def __post_init__(self):
        problems = []
        if not self.prompts or not all(p.strip() for p in self.prompts):
            problems.append("give at least one non-empty --prompt")
        if self.threshold is not None and not 0.0 < self.threshold < 1.0:
            problems.append(f"--threshold must be in (0, 1), got {self.threshold}")
        if not 0.0 <= self.floor < 1.0:
            problems.append(f"--floor must be in [0, 1), got {self.floor}")
        if self.batch_size < 1:
            problems.append("--batch-size must be 1 or more")
        if problems:
            raise SdLoraError("; ".join(problems))


@dataclass
class MaskReport:
    written: list[Path] = field(default_factory=list)
    kept: list[Path] = field(default_factory=list)
    failed: list[tuple[Path, str]] = field(default_factory=list)


class ClipSegMasker:
    def __init__(self, settings: MaskSettings, files: ModelFiles):
        import torch

        quiet_libraries()
        from transformers import CLIPSegForImageSegmentation, CLIPSegProcessor

        self.settings, self.files = settings, files
        self.device = pick_device(settings.device)
        try:
            self.processor = CLIPSegProcessor.from_pretrained(files.folder)
            self.model = CLIPSegForImageSegmentation.from_pretrained(files.folder, dtype=torch.float32)
        except (OSError, ValueError, KeyError) as e:
            raise SdLoraError(f"--model {files.model!r}: not a CLIPSeg model transformers can load ({e})") from e
        self.model.to(self.device).eval()

    def probabilities(self, images: list[Image.Image]) -> list[np.ndarray]:
        """Per image, the largest prompt probability of every pixel, at the image's size (float32 in [0, 1])."""
        import torch

        prompts = list(self.settings.prompts)
        inputs = self.processor(text=prompts * len(images), images=[im for im in images for _ in prompts],
                                return_tensors="pt", padding=True).to(self.device)
        with torch.inference_mode():
            logits = self.model(**inputs).logits.float()
        logits = logits.reshape(len(images), len(prompts), *logits.shape[-2:])
        probs = torch.sigmoid(logits).amax(dim=1)
        out = []
        for im, p in zip(images, probs):
            resized = torch.nn.functional.interpolate(p[None, None], size=(im.height, im.width), mode="bilinear",
                                                      align_corners=False)
            out.append(resized[0, 0].clamp(0, 1).cpu().numpy())
        return out

    def masks(self, images: list[Image.Image]) -> list[Image.Image]:
        s = self.settings
        result = []
        for p in self.probabilities(images):
            weight = (p >= s.threshold).astype(np.float32) if s.threshold is not None else p
            weight = 1.0 - weight if s.invert else weight
            weight = s.floor + (1.0 - s.floor) * weight
            result.append(Image.fromarray(np.rint(weight * 255).astype(np.uint8), "L"))
        return result


def load_masker(settings: MaskSettings) -> ClipSegMasker:
    return ClipSegMasker(settings, resolve_model(settings.model, ("config.json",), "--model", settings.revision))


def make_masks(folder: str | Path, out_dir: str | Path, masker: ClipSegMasker, overwrite: bool = False,
               progress: Callable[[int, int], None] | None = None) -> MaskReport:
    """One mask PNG per image of `folder` in `out_dir` (kept when one exists, unless `overwrite`)."""
    folder, out_dir = Path(folder), Path(out_dir)
    if not folder.is_dir():
        raise SdLoraError(f"{folder}: not a folder; give the folder holding the training images")
    if out_dir.resolve() == folder.resolve():
        raise SdLoraError("the masks must go to their own folder (data.mask_dir), not the image folder: sd-lora "
                          "would train on them as images")
    images = list_images(folder)
    report = MaskReport()
    todo = []
    for image in images:
        if not overwrite and any(out_dir.glob(f"{glob.escape(image.stem)}.*")):
            report.kept.append(image)
        else:
            todo.append(image)
    size = masker.settings.batch_size
    for start in range(0, len(todo), size):
        batch, pictures = [], []
        for image in todo[start:start + size]:
            try:
                pictures.append(load_rgb(image))
                batch.append(image)
            except (BadImage, OSError) as e:
                report.failed.append((image, str(e)))
        if batch:
            for image, mask in zip(batch, masker.masks(pictures)):
                with atomic_path(out_dir / f"{image.stem}.png") as tmp:
                    mask.save(tmp, format="PNG")
                report.written.append(image)
        if progress:
            progress(min(start + size, len(todo)), len(todo))
    return report


def contact_sheet(folder: str | Path, mask_dir: str | Path, target: str | Path, thumb: int = 192,
                  limit: int = 200) -> Path:
    """A JPEG grid, one row per image: the image, its mask, and the image dimmed where the mask is dark."""
    folder, mask_dir = Path(folder), Path(mask_dir)
    rows = []
    for image in list_images(folder):
        found = sorted(mask_dir.glob(f"{glob.escape(image.stem)}.*"))
        if not found:
            continue
        try:
            im = load_rgb(image)
        except (BadImage, OSError):
            continue
        with Image.open(found[0]) as m:
            mask = ImageOps.exif_transpose(m).convert("L").resize(im.size)
        dim = Image.composite(im, Image.blend(im, Image.new("RGB", im.size), 0.75), mask)
        rows.append([ImageOps.contain(x, (thumb, thumb)) for x in (im, mask.convert("RGB"), dim)])
        if len(rows) == limit:
            break
    if not rows:
        raise SdLoraError(f"{mask_dir}: no masks for the images of {folder}; make them first")
    sheet = Image.new("RGB", (3 * (thumb + 4) + 4, len(rows) * (thumb + 4) + 4), (40, 40, 40))
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            sheet.paste(tile, (4 + c * (thumb + 4), 4 + r * (thumb + 4)))
    with atomic_path(target) as tmp:
        sheet.save(tmp, format="JPEG", quality=88)
    return Path(target)
