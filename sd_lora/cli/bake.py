"""`sd-lora bake --model BASE --lora A:0.8 [--lora B:0.5 ...] -o OUT [--save-precision fp16|bf16|fp32]`."""

from __future__ import annotations

__all__ = ["add_parser", "run"]


def add_parser(subparsers, name: str) -> None:
    from sd_lora.models.families import FAMILY_CHOICES

    p = subparsers.add_parser(name, help="merge adapters into a base model's weights and write a checkpoint")
    p.add_argument("--model", required=True, help="base: single .safetensors file, diffusers folder or hub id")
    p.add_argument("--lora", action="append", required=True, metavar="FILE[:WEIGHT]",
                   help="adapter to bake at WEIGHT (default 1); repeat for several, applied in order")
    p.add_argument("-o", "--output", required=True,
                   help="OUT.safetensors: one file in the original (ldm/sgm) layout; a folder: diffusers format")
    p.add_argument("--save-precision", choices=["fp16", "bf16", "fp32"], default="fp16")
    p.add_argument("--family", choices=FAMILY_CHOICES, help="check the model is of this family")
    p.add_argument("--allow-pickle", action="store_true", help="read pickled .ckpt files you trust")


def run(args) -> int:
    from sd_lora.tools.bake import bake_adapters

    report = bake_adapters(args.model, args.lora, args.output, save_precision=args.save_precision,
                           family=args.family, allow_pickle=args.allow_pickle, progress=True)
    print(report.summary())
    return 0
