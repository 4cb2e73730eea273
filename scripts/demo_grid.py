"""Before/after grid of the demo LoRA: the same prompts and seeds at LoRA scales 0, 0.5 and 1.

    .venv/bin/python scripts/demo_grid.py --lora output/demo/demo_style.safetensors --out output/demo/demo_grid.png

Run after `sd-lora train --config train_configs/demo.toml`. Prints, per scale, the style statistic
(ground darkness, `sd_lora.models.shapes.style_statistic`) next to the style set's own value, and how
often the generated shape still has the prompt's colour.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from sd_lora.models.shapes import PALETTE, TRIGGER, centre_colour, style_statistic

__all__ = ["PROMPTS", "SCALES", "sweep", "colour_hits", "grid_image", "main"]

ROOT = Path(__file__).resolve().parent.parent
# The trigger goes last, as in the style set's captions (see the model card: a word in front shifts the content).
PROMPTS = [f"a large {c} {s}, {TRIGGER}" for c, s in
           [("red", "circle"), ("blue", "square"), ("yellow", "triangle"), ("green", "diamond"),
            ("purple", "circle"), ("orange", "square")]]
SCALES = (0.0, 0.5, 1.0)


def sweep(pipe, lora_file: Path, prompts=PROMPTS, seeds=(0,), scales=SCALES, steps: int = 20,
          guidance: float = 5.0) -> dict[float, list[np.ndarray]]:
    """Images (HxWx3 in [0, 1]) per scale, in prompt-major then seed order; same noise at every scale."""
    from sd_lora.inference.adapters import AdapterSet

    adapters = AdapterSet(pipe)
    file = Path(lora_file).resolve()
    adapters.add(file)
    pipe.set_progress_bar_config(disable=True)
    out: dict[float, list[np.ndarray]] = {}
    for scale in scales:
        adapters.activate([(file, float(scale))])
        gens = [torch.Generator().manual_seed(s) for _ in prompts for s in seeds]
        batch = [p for p in prompts for _ in seeds]
        out[float(scale)] = list(pipe(batch, generator=gens, num_inference_steps=steps, guidance_scale=guidance,
                                      output_type="np").images)
    adapters.activate([])
    return out


def colour_hits(images, prompts, seeds_per_prompt: int) -> float:
    """Fraction of images whose shape has the colour named in their prompt.

    The prompts ask for large shapes with no position: the shape fills the middle and often reaches the border,
    so its colour is read from the centre (`centre_colour`), whatever the ground is."""
    wanted = [next(w for w in p.replace(",", " ").split() if w in PALETTE) for p in prompts]
    labels = [centre_colour(im) for im in images]
    return float(np.mean([lab == wanted[i // seeds_per_prompt] for i, lab in enumerate(labels)]))


def grid_image(images_by_scale: dict[float, list[np.ndarray]], row_labels, zoom: int = 3):
    """Rows = prompts, columns = scales, each image enlarged `zoom` times (nearest neighbour)."""
    from PIL import Image

    from sd_lora.inference.grid import make_grid

    scales = list(images_by_scale)
    cells = []
    for r in range(len(row_labels)):
        for s in scales:
            arr = (np.clip(images_by_scale[s][r], 0, 1) * 255).round().astype(np.uint8)
            im = Image.fromarray(arr)
            cells.append(im.resize((im.width * zoom, im.height * zoom), Image.Resampling.NEAREST))
    cols = [f"scale {s:g}" + (" (base)" if s == 0 else "") for s in scales]
    return make_grid(cells, cols=len(scales), row_labels=list(row_labels), col_labels=cols)


def main(argv=None) -> int:
    from PIL import Image

    from sd_lora.fileio import atomic_path
    from sd_lora.inference.pipeline import load_generation_pipeline

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lora", type=Path, default=ROOT / "output" / "demo" / "demo_style.safetensors")
    p.add_argument("--model", default="builtin:tiny")
    p.add_argument("--out", type=Path, default=ROOT / "output" / "demo" / "demo_grid.png")
    p.add_argument("--style-dir", type=Path, default=ROOT / "datasets_example" / "night_shapes")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=int, default=20, help="DDIM steps")
    p.add_argument("--guidance", type=float, default=5.0)
    args = p.parse_args(argv)
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    pipe, _ = load_generation_pipeline(args.model, device="cpu", dtype="fp32")
    images = sweep(pipe, args.lora, seeds=(args.seed,), steps=args.steps, guidance=args.guidance)
    target = style_statistic(Image.open(f) for f in sorted(args.style_dir.glob("*.png")))
    print(f"style statistic (ground darkness) of the style set: {target:.3f}")
    for scale, ims in images.items():
        seen = ", ".join(f"{p.split()[2]}->{centre_colour(im)}" for p, im in zip(PROMPTS, ims))
        print(f"scale {scale:g}: ground darkness {style_statistic(ims):.3f}, "
              f"prompt colour followed {colour_hits(ims, PROMPTS, 1):.0%} (asked->seen: {seen})")
    grid = grid_image(images, [p.rsplit(", ", 1)[0] for p in PROMPTS])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(args.out) as tmp:
        grid.save(tmp, format="PNG", optimize=True)
    print(f"grid: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
