"""Aspect-ratio buckets: which (width, height) each image trains at.

Without bucketing every image trains at resolution x resolution. With it, the candidate buckets are all
(w, h) with sides in [min_bucket_reso, max_bucket_reso], multiples of bucket_reso_steps, as tall as the
pixel budget resolution² allows; each image goes to the bucket whose aspect ratio is closest to its own
(distance measured on log(w / h), ties to the larger area). With bucket_no_upscale an image gets its own
bucket: its size scaled down to the budget if needed, rounded down to the step, so nothing is enlarged.
"""

from __future__ import annotations

import math
from collections import Counter

from sd_lora.config.data import DataConfig

__all__ = ["make_buckets", "closest_bucket", "no_upscale_bucket", "bucket_for", "bucket_report"]

Size = tuple[int, int]  # (width, height)


def make_buckets(resolution: int, min_reso: int, max_reso: int, step: int) -> list[Size]:
    max_area = resolution * resolution
    buckets = {(resolution // step * step,) * 2}
    for w in range(min_reso, max_reso + 1, step):
        h = min(max_reso, max_area // w // step * step)
        if h >= min_reso:
            buckets.update({(w, h), (h, w)})
    return sorted(buckets)


def closest_bucket(width: int, height: int, buckets: list[Size]) -> Size:
    ratio = math.log(width / height)
    return min(buckets, key=lambda b: (abs(math.log(b[0] / b[1]) - ratio), -b[0] * b[1], b[0]))


def no_upscale_bucket(width: int, height: int, resolution: int, max_reso: int, step: int) -> Size:
    scale = min(1.0, resolution / math.sqrt(width * height), max_reso / width, max_reso / height)
    return (max(step, int(width * scale) // step * step), max(step, int(height * scale) // step * step))


def bucket_for(width: int, height: int, cfg: DataConfig, buckets: list[Size] | None = None) -> Size:
    """The (w, h) an image of this displayed size trains at under `cfg`."""
    if not cfg.enable_bucket:
        return cfg.resolution, cfg.resolution
    if cfg.bucket_no_upscale:
        return no_upscale_bucket(width, height, cfg.resolution, cfg.max_bucket_reso, cfg.bucket_reso_steps)
    if buckets is None:
        buckets = make_buckets(cfg.resolution, cfg.min_bucket_reso, cfg.max_bucket_reso, cfg.bucket_reso_steps)
    return closest_bucket(width, height, buckets)


def bucket_report(sizes: list[Size]) -> str:
    """One line per bucket, largest count first: '768x512: 12 images'."""
    counts = Counter(sizes)
    return "\n".join(f"{w}x{h}: {n} image{'s' if n != 1 else ''}"
                     for (w, h), n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
