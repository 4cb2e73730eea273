"""`sd-lora resize IN -o OUT (--rank R | --dynamic sv_ratio|sv_fro|sv_cumulative --param X) [--conv-rank R]
[--json]`: lower an adapter's rank by SVD."""

from __future__ import annotations

import json

__all__ = ["add_parser", "run"]


def add_parser(subparsers, name: str) -> None:
    from sd_lora.models.families import FAMILY_CHOICES

    p = subparsers.add_parser(name, help="lower an adapter's rank by SVD (fixed or dynamic per module)")
    p.add_argument("input", help="adapter file (any format sd-lora reads)")
    p.add_argument("-o", "--output", required=True, help="resized .safetensors file (community format)")
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument("--rank", type=int, help="new rank of every module (never above the module's own)")
    group.add_argument("--dynamic", choices=["sv_ratio", "sv_fro", "sv_cumulative"],
                       help="per-module rank: sv_ratio keeps singular values >= max/X; sv_fro the smallest rank "
                            "keeping fraction X of the Frobenius norm; sv_cumulative the smallest rank whose "
                            "singular-value sum reaches fraction X")
    p.add_argument("--param", type=float, help="X of the dynamic rule (sv_ratio: >= 1; sv_fro/sv_cumulative: (0, 1])")
    p.add_argument("--conv-rank", type=int, help="rank (cap, with --dynamic) of 3x3 conv modules")
    p.add_argument("--family", choices=FAMILY_CHOICES, help="model family when the file does not say")
    p.add_argument("--model", help="base model (needed for DoRA files; also validates the result)")
    p.add_argument("--save-precision", choices=["fp16", "bf16", "fp32"], default="fp16")
    p.add_argument("--json", action="store_true", help="print the per-module table and summary as JSON")
    p.add_argument("--allow-pickle", action="store_true", help="read a pickled .ckpt/.pt you trust")


def run(args) -> int:
    from sd_lora.errors import SdLoraError
    from sd_lora.tools.resize import resize_adapter

    if args.dynamic and args.param is None:
        raise SdLoraError(f"--dynamic {args.dynamic} needs --param X")
    if args.param is not None and not args.dynamic:
        raise SdLoraError("--param goes with --dynamic")
    report = resize_adapter(args.input, args.output, rank=args.rank, dynamic=args.dynamic, param=args.param,
                            conv_rank=args.conv_rank, family=args.family, model=args.model,
                            save_precision=args.save_precision, allow_pickle=args.allow_pickle)
    if args.json:
        print(json.dumps(report.as_dict(), indent=2))
    else:
        print(report.table())
        print(report.written.summary())
    return 0
