"""The demo's style check (tests/builtin/test_demo_style.py: same shortened run, seeds and thresholds) under a
given train.mixed_precision, so a precision can be checked not to change what the demo learns.

    .venv/bin/python scripts/demo_style_check.py --precision bf16 --precision auto
"""

from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
STYLE_DIR = REPO / "datasets_example" / "night_shapes"
SHORT_STEPS, SEEDS = 400, (11, 12, 13, 14)  # as tests/builtin/test_demo_style.py


def check(precision: str, out: Path) -> str:
    from accelerate.state import AcceleratorState

    from sd_lora.config.load import load_config
    from sd_lora.models.load import load_pipeline
    from sd_lora.models.shapes import style_statistic
    from sd_lora.train.recipe import run_training

    spec = importlib.util.spec_from_file_location("demo_grid", REPO / "scripts" / "demo_grid.py")
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    AcceleratorState._reset_state(True)  # precision is process-wide accelerate state
    start = time.perf_counter()
    cfg = load_config(REPO / "train_configs" / "demo.toml", [f"train.max_steps={SHORT_STEPS}", f"output.dir={out}",
                                                             "output.save_state_at_end=false",
                                                             f"train.mixed_precision={precision}"])
    result = run_training(cfg, overwrite=True)
    images = demo.sweep(load_pipeline("builtin:tiny")[0], result.adapter_path, seeds=SEEDS, steps=20)
    base, half, full = (style_statistic(images[s]) for s in (0.0, 0.5, 1.0))
    target = style_statistic(Image.open(f) for f in sorted(STYLE_DIR.glob("*.png")))
    hits = {s: demo.colour_hits(ims, demo.PROMPTS, len(SEEDS)) for s, ims in images.items()}
    ok = (target > base + 0.3 and base < half < full and full - base >= 0.5 * (target - base)
          and hits[0.5] >= 0.8 and hits[1.0] >= 0.7)
    return (f"| {precision} | {base:.3f} / {half:.3f} / {full:.3f} (style set {target:.3f}) | {hits[0.5]:.3f} / "
            f"{hits[1.0]:.3f} | {result.losses[-1]:.4f} | {'pass' if ok else 'FAIL'} | "
            f"{time.perf_counter() - start:.0f} s |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--precision", action="append", choices=["auto", "no", "bf16", "fp16"], required=True)
    args = p.parse_args()
    torch.set_num_threads(1)  # as the test: one thread on a shared CPU
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for precision in args.precision:
            rows.append(check(precision, Path(work) / precision))
            print(rows[-1], flush=True)
    print("\n| precision | ground darkness at scale 0 / 0.5 / 1 | prompt colour kept at 0.5 / 1 | final loss | "
          "thresholds | time |\n|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
