"""Write a synthetic captioned image dataset: N small PNGs (a coloured shape on a coloured ground, distinct per
index) with same-stem .txt captions, for scale tests of the scan, the caches and the loader.

    .venv/bin/python scripts/make_synthetic_dataset.py /tmp/synth20k --count 20000 --size 64
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

from PIL import Image, ImageDraw

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220), "yellow": (230, 220, 20),
           "white": (240, 240, 240), "black": (15, 15, 15), "purple": (150, 40, 180), "orange": (240, 140, 20)}
SHAPES = ("square", "circle")


def make_dataset(folder: Path, count: int, size: int = 64, seed: int = 0) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    names = list(COLOURS)
    for i in range(count):
        fg, bg = rng.sample(names, 2)
        shape = SHAPES[i % 2]
        im = Image.new("RGB", (size, size), COLOURS[bg])
        a, b = rng.randint(0, size // 3), rng.randint(2 * size // 3, size - 1)
        box = [a, rng.randint(0, size // 3), b, rng.randint(2 * size // 3, size - 1)]
        (ImageDraw.Draw(im).rectangle if shape == "square" else ImageDraw.Draw(im).ellipse)(box, fill=COLOURS[fg])
        im.putpixel((i % size, (i // size) % size), (i % 251, (i // 251) % 251, 7))  # every file differs
        im.save(folder / f"{i:06d}.png", compress_level=1)
        (folder / f"{i:06d}.txt").write_text(f"a {fg} {shape} on {bg}")
    return folder


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", type=Path)
    p.add_argument("--count", type=int, default=20000)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    start = time.perf_counter()
    make_dataset(args.folder, args.count, args.size, args.seed)
    print(f"wrote {args.count} images ({args.size} px) with captions to {args.folder} in "
          f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
