"""Draw the demo style set in datasets_example/night_shapes/ (committed; this reproduces it).

    .venv/bin/python scripts/make_demo_dataset.py

The style ("night shapes") is one the built-in base model never saw: the shapes of its corpus on
a near-black ground (`sd_lora.models.shapes.style_sample`). Captions describe the content and end
with the trigger word (`a large red circle at the top left, sdlstyle`): the tiny base's text
encoder is causal, so a trigger placed last leaves the content words' embeddings untouched and
the near-black ground is what an adapter has to absorb. Deterministic given --seed.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from sd_lora.fileio import atomic_path, atomic_write_text
from sd_lora.models.shapes import style_sample, style_statistic

__all__ = ["write_style_set", "main"]

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "datasets_example" / "night_shapes"


def write_style_set(out_dir: Path, count: int = 32, seed: int = 0, size: int = 32) -> list[Path]:
    """Write `count` PNG + .txt pairs to `out_dir`; returns the image paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        image, caption = style_sample(seed, i, size)
        path = out_dir / f"{i:03d}.png"
        with atomic_path(path) as tmp:
            image.save(tmp, format="PNG", optimize=True)
        atomic_write_text(path.with_suffix(".txt"), caption + "\n")
        paths.append(path)
    return paths


def main(argv=None) -> int:
    from PIL import Image

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=DEFAULT_DIR)
    p.add_argument("--count", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", type=int, default=32)
    args = p.parse_args(argv)
    paths = write_style_set(args.out, args.count, args.seed, args.size)
    darkness = style_statistic([Image.open(path) for path in paths])
    total = sum(f.stat().st_size for f in args.out.iterdir())
    print(f"wrote {len(paths)} images + captions to {args.out} ({total / 1024:.0f} KiB); ground darkness {darkness:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
