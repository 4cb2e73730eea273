"""`sd-lora make-tiny DIR [--family sd1|sd2|sdxl]`: a tiny random SD-shaped model, offline, in seconds."""

from __future__ import annotations

__all__ = ["add_parser", "run"]


def add_parser(subparsers, name: str) -> None:
    p = subparsers.add_parser(name, help="write a tiny randomly initialised SD1/SD2/SDXL diffusers model (offline)",
                              description="Write a tiny SD-architecture model with random weights, for smoke tests "
                                          "and CI. It trains and generates like a real one but draws noise.")
    p.add_argument("out", help="output directory (a diffusers model folder)")
    p.add_argument("--family", choices=["sd1", "sd2", "sdxl"], default="sd1")
    p.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    from pathlib import Path

    from sd_lora.errors import SdLoraError
    from sd_lora.models.tiny import save_tiny_pipeline

    out = Path(args.out)
    if out.exists() and any(out.iterdir()):
        raise SdLoraError(f"{out} exists and is not empty; choose a new folder")
    save_tiny_pipeline(out, family=args.family, seed=args.seed)
    print(f"wrote a tiny {args.family} model to {out}")
    return 0
