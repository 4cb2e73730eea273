"""Compare demo-style adapters trained with different methods: the demo_grid.py measurements, one row each.

    python scripts/compare_methods.py lora=output/lora/demo_style.safetensors \
        adalora=output/adalora/demo_style.safetensors oft=output/oft/demo_style.safetensors

Per file, at LoRA scale 1 over the demo prompts and --seeds seeds: the style statistic (ground darkness,
`sd_lora.models.shapes.style_statistic`; the style set's own value is printed first) and the share of images
whose shape keeps the prompt's colour, plus the file's size, module count and total rank. Scale 0 (the base)
is the first row.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parent))
from demo_grid import PROMPTS, ROOT, colour_hits, sweep  # noqa: E402

from sd_lora.models.shapes import style_statistic  # noqa: E402

__all__ = ["main"]


def _file_facts(path: Path) -> tuple[int, int]:
    with safe_open(str(path), "pt") as f:
        downs = [f.get_slice(k).get_shape()[0] for k in f.keys() if k.endswith("lora_down.weight")]
    return len(downs), sum(downs)


def main(argv=None) -> int:
    from PIL import Image

    from sd_lora.inference.pipeline import load_generation_pipeline

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", metavar="NAME=FILE")
    p.add_argument("--model", default="builtin:tiny")
    p.add_argument("--style-dir", type=Path, default=ROOT / "datasets_example" / "night_shapes")
    p.add_argument("--seeds", type=int, default=4, help="seeds per prompt (the grid uses 1)")
    p.add_argument("--steps", type=int, default=20, help="DDIM steps")
    p.add_argument("--guidance", type=float, default=5.0)
    args = p.parse_args(argv)
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    seeds = tuple(range(args.seeds))
    target = style_statistic(Image.open(f) for f in sorted(args.style_dir.glob("*.png")))
    print(f"style statistic of the style set: {target:.3f}; {len(PROMPTS)} prompts x {len(seeds)} seeds at scale 1\n")
    print("| adapter | style statistic | colour kept | modules | total rank | file size |")
    print("|---|---|---|---|---|---|")
    for i, spec in enumerate(args.files):
        name, _, file = spec.partition("=")
        path = Path(file)
        pipe, _ = load_generation_pipeline(args.model, device="cpu", dtype="fp32")  # files may share a stem (name)
        images = sweep(pipe, path, seeds=seeds, scales=(0.0, 1.0) if i == 0 else (1.0,), steps=args.steps,
                       guidance=args.guidance)
        if i == 0:
            base = images[0.0]
            print(f"| base (scale 0) | {style_statistic(base):.3f} | {colour_hits(base, PROMPTS, len(seeds)):.0%} "
                  "| | | |")
        ims = images[1.0]
        modules, rank = _file_facts(path)
        print(f"| {name} | {style_statistic(ims):.3f} | {colour_hits(ims, PROMPTS, len(seeds)):.0%} | {modules} | "
              f"{rank} | {path.stat().st_size / 2**20:.2f} MiB |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
