"""The data of a dataset report: every image with its caption, size, training bucket and perceptual hash; the
images too small to train, the ones without a caption, near-duplicates, the bucket and tag counts.

`dataset_report_data` reads the folder the way training does (sd-lora's own scan: repeat folders, metadata.jsonl,
class tokens, the same too-small rule), so what the report shows is what a run would get. `report_html` renders
it; the studio can render the same data its own way.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from sd_lora.captioning.tag_ops import tag_frequencies
from sd_lora.config.data import DataConfig
from sd_lora.data.buckets import bucket_for, make_buckets
from sd_lora.data.images import BadImage, load_rgb
from sd_lora.data.scan import scan_dataset
from sd_lora.errors import SdLoraError

__all__ = ["ReportImage", "DatasetReport", "dataset_report_data", "dhash", "duplicate_groups"]

_HASH_SIDE = 8  # 64-bit difference hash


@dataclass
class ReportImage:
    path: Path
    subset: str
    width: int
    height: int
    caption: str
    caption_source: str  # "file", "metadata", "class_tokens" or "none"
    bucket: tuple[int, int]
    phash: int | None = None  # None when the pixels could not be decoded
    thumbnail: Image.Image | None = None


@dataclass
class DatasetReport:
    folder: Path
    resolution: int
    enable_bucket: bool
    images: list[ReportImage]
    skipped: list[tuple[Path, str]]  # unusable files with the reason (too small, broken, ...)
    warnings: list[str]
    duplicates: list[list[Path]] = field(default_factory=list)

    @property
    def too_small(self) -> list[tuple[Path, str]]:
        return [(p, why) for p, why in self.skipped if why.startswith("too small")]

    @property
    def missing_captions(self) -> list[Path]:
        return [im.path for im in self.images if not im.caption.strip()]

    @property
    def buckets(self) -> list[tuple[tuple[int, int], int]]:
        """(bucket, image count), most used first."""
        return sorted(Counter(im.bucket for im in self.images).items(), key=lambda kv: (-kv[1], kv[0]))

    @property
    def tags(self) -> list[tuple[str, int]]:
        return tag_frequencies(im.caption for im in self.images)

    def summary(self) -> dict:
        return {"folder": str(self.folder), "images": len(self.images), "skipped": len(self.skipped),
                "too_small": len(self.too_small), "missing_captions": len(self.missing_captions),
                "duplicate_groups": len(self.duplicates), "buckets": len(self.buckets), "distinct_tags": len(self.tags)}


def dhash(im: Image.Image) -> int:
    """64-bit difference hash: whether each pixel of a 9x8 grayscale copy is brighter than its right neighbour.
    Resizes, re-encodes and small edits keep most bits; different pictures differ in about half."""
    small = np.asarray(im.convert("L").resize((_HASH_SIDE + 1, _HASH_SIDE), Image.Resampling.LANCZOS), dtype=np.int16)
    bits = (small[:, 1:] > small[:, :-1]).flatten()
    return int("".join("1" if b else "0" for b in bits), 2)


def duplicate_groups(hashes: dict[Path, int], max_distance: int = 6) -> list[list[Path]]:
    """Groups of images whose hashes differ in at most `max_distance` of 64 bits (linked transitively)."""
    paths = list(hashes)
    if len(paths) < 2:
        return []
    values = np.array([hashes[p] for p in paths], dtype=np.uint64)
    parent = list(range(len(paths)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(len(paths) - 1):
        # popcount via unpackbits: np.bitwise_count needs numpy 2, and sd-lora accepts numpy 1 too
        distances = np.unpackbits((values[i + 1:] ^ values[i]).view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)
        for j in np.nonzero(distances <= max_distance)[0]:
            parent[root(i + 1 + int(j))] = root(i)
    groups: dict[int, list[Path]] = {}
    for i, p in enumerate(paths):
        groups.setdefault(root(i), []).append(p)
    return sorted((sorted(g) for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def dataset_report_data(folder: str | Path, resolution: int = 512, enable_bucket: bool = True,
                        caption_extension: str = ".txt", thumbnail: int = 0, max_distance: int = 6) -> DatasetReport:
    """Scan `folder` as training would at `resolution`; `thumbnail` > 0 also keeps thumbnails that size."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SdLoraError(f"{folder}: not a folder; give the dataset folder")
    # sd-lora's bucket defaults (256..1024) at 512 and above; below, the range scales down so small test
    # resolutions still get non-square buckets.
    min_reso = max(64, min(256, resolution // 2) // 64 * 64)
    cfg = DataConfig(dir=str(folder), resolution=resolution, enable_bucket=enable_bucket,
                     caption_extension=caption_extension, min_bucket_reso=min_reso,
                     max_bucket_reso=max(1024, resolution // 64 * 64))
    problems = cfg.validate()
    if problems:
        raise SdLoraError("; ".join(problems))
    scan = scan_dataset(cfg)
    buckets = make_buckets(cfg.resolution, cfg.min_bucket_reso, cfg.max_bucket_reso, cfg.bucket_reso_steps)
    images = []
    for sub in scan.subsets:
        for rec in sub.records:
            images.append(ReportImage(rec.path, sub.spec.name, rec.width, rec.height, rec.caption, rec.caption_source,
                                      bucket_for(rec.width, rec.height, cfg, buckets)))
    skipped = list(scan.skipped)
    side = max(thumbnail, 64)
    for im in images:
        try:
            pixels = load_rgb(im.path, min_size=(side, side))
        except (BadImage, OSError) as e:
            skipped.append((im.path, f"cannot be decoded ({e})"))
            continue
        im.phash = dhash(pixels)
        if thumbnail:
            pixels.thumbnail((thumbnail, thumbnail))
            im.thumbnail = pixels
    report = DatasetReport(folder, resolution, enable_bucket, images, skipped, list(scan.warnings))
    report.duplicates = duplicate_groups({im.path: im.phash for im in images if im.phash is not None}, max_distance)
    return report
