"""`sd-lora extract --base BASE --tuned TUNED -o OUT --rank R [--conv-rank R] [--text-encoder auto|on|off]
[--min-diff EPS] [--clamp-quantile Q]`: a LoRA from the difference of two checkpoints."""

from __future__ import annotations

__all__ = ["add_parser", "run"]


def add_parser(subparsers, name: str) -> None:
    p = subparsers.add_parser(name, help="extract a LoRA from the difference of two checkpoints of one family")
    p.add_argument("--base", required=True, help="original model: diffusers folder, single .safetensors file or hub id")
    p.add_argument("--tuned", required=True, help="fine-tuned model of the same family")
    p.add_argument("-o", "--output", required=True, help="LoRA .safetensors file to write (community format)")
    p.add_argument("--rank", type=int, required=True, help="rank of the linear / 1x1 modules")
    p.add_argument("--conv-rank", type=int, help="also extract the ResNet 3x3 convs (LoCon) at this rank")
    p.add_argument("--text-encoder", choices=["auto", "on", "off"], default="auto",
                   help="auto: text-encoder modules that differ by more than --min-diff; on: all of them; off: none")
    p.add_argument("--min-diff", type=float, default=0.01,
                   help="skip modules whose largest |tuned - base| is at most this (kohya's default 0.01)")
    p.add_argument("--clamp-quantile", type=float,
                   help="clip the factors to this quantile of their absolute values (kohya uses 0.99); default: off")
    p.add_argument("--save-precision", choices=["fp16", "bf16", "fp32"], default="fp16")
    p.add_argument("--allow-pickle", action="store_true", help="read pickled .ckpt checkpoints you trust")


def run(args) -> int:
    from sd_lora.tools.extract import extract_adapter

    report = extract_adapter(args.base, args.tuned, args.output, rank=args.rank, conv_rank=args.conv_rank,
                             text_encoder=args.text_encoder, min_diff=args.min_diff,
                             clamp_quantile=args.clamp_quantile, save_precision=args.save_precision,
                             allow_pickle=args.allow_pickle, progress=True)
    print(report.summary())
    return 0
