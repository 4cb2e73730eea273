"""`sd-lora merge A.safetensors:0.7 B.safetensors:0.3 -o OUT --method concat|svd [--rank R] [--conv-rank R]`."""

from __future__ import annotations

__all__ = ["add_parser", "run"]


def add_parser(subparsers, name: str) -> None:
    from sd_lora.models.families import FAMILY_CHOICES

    p = subparsers.add_parser(name, help="merge several adapters into one (weighted sum of their deltas)")
    p.add_argument("inputs", nargs="+", metavar="FILE[:WEIGHT]", help="adapter files, each with its weight (default 1)")
    p.add_argument("-o", "--output", required=True, help="merged .safetensors file (community format)")
    p.add_argument("--method", choices=["concat", "svd"], default="concat",
                   help="concat: stack the factors, exact, rank = sum of ranks (LoRA/LoCon); svd: refactor each "
                        "module's summed delta to --rank (any adapter type)")
    p.add_argument("--rank", type=int, help="svd: rank of the result")
    p.add_argument("--conv-rank", type=int, help="svd: rank of 3x3 conv modules (default: --rank)")
    p.add_argument("--family", choices=FAMILY_CHOICES, help="model family when the files do not say")
    p.add_argument("--model", help="base model (needed to merge DoRA files with svd; also validates the result)")
    p.add_argument("--save-precision", choices=["fp16", "bf16", "fp32"], default="fp16")
    p.add_argument("--allow-pickle", action="store_true", help="read pickled .ckpt/.pt files you trust")


def run(args) -> int:
    from sd_lora.tools.merge import merge_adapters

    report = merge_adapters(args.inputs, args.output, method=args.method, rank=args.rank, conv_rank=args.conv_rank,
                            family=args.family, model=args.model, save_precision=args.save_precision,
                            allow_pickle=args.allow_pickle)
    print(report.summary())
    return 0
