"""`sd-lora dataset-report DIR [-o report.html] [--resolution 512] [--no-bucket] [--json]`: one HTML page with every
image and caption, buckets, a tag cloud, near-duplicates, too-small images and missing captions."""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["add_parser", "run"]


def add_parser(subparsers, name: str) -> None:
    p = subparsers.add_parser(name, help="HTML report of a dataset folder: thumbnails, captions, buckets, tags, "
                                         "duplicates, too-small images, missing captions")
    p.add_argument("dir", help="dataset folder (flat or kohya repeat folders)")
    p.add_argument("-o", "--output", help="HTML file to write (default DIR/dataset-report.html)")
    p.add_argument("--resolution", type=int, default=512, help="training resolution the buckets are computed for")
    p.add_argument("--no-bucket", action="store_true", help="square crops instead of aspect buckets")
    p.add_argument("--caption-extension", default=".txt")
    p.add_argument("--max-distance", type=int, default=6,
                   help="images whose 64-bit perceptual hashes differ in at most this many bits are duplicates")
    p.add_argument("--thumbnail", type=int, default=176, help="thumbnail size in pixels")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args) -> int:
    from sd_lora.captioning.report import dataset_report_data
    from sd_lora.captioning.report_html import write_report

    report = dataset_report_data(args.dir, resolution=args.resolution, enable_bucket=not args.no_bucket,
                                 caption_extension=args.caption_extension, thumbnail=args.thumbnail,
                                 max_distance=args.max_distance)
    target = write_report(report, Path(args.output) if args.output else Path(args.dir) / "dataset-report.html")
    summary = {**report.summary(), "report": str(target)}
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in summary.items()))
    return 0
