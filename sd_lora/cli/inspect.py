"""`sd-lora inspect FILE [--json] [--ranks]`: family, format, adapter type, ranks/alphas, modules, metadata, hashes;
with --ranks also every module's effective rank (singular values above 1e-3 of the largest)."""

from __future__ import annotations

import json

__all__ = ["add_parser", "run"]


def add_parser(subparsers, name: str) -> None:
    from sd_lora.models.families import FAMILY_CHOICES

    p = subparsers.add_parser(name, help="describe an adapter file (LoRA/LoCon/LoHa/LoKr/DoRA, any format)")
    p.add_argument("file", help="adapter .safetensors file or peft adapter directory")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--ranks", action="store_true",
                   help="also show each module's effective rank (singular values above 1e-3 of the largest)")
    p.add_argument("--family", choices=FAMILY_CHOICES,
                   help="--ranks: model family when the file does not say")
    p.add_argument("--allow-pickle", action="store_true", help="read a pickled .ckpt/.pt you trust")


def run(args) -> int:
    from sd_lora.formats.summary import format_summary, summarize_file

    summary = summarize_file(args.file, allow_pickle=args.allow_pickle)
    ranks = None
    if getattr(args, "ranks", False):
        from sd_lora.tools.ranks import effective_ranks

        ranks = effective_ranks(args.file, family=getattr(args, "family", None) or summary.get("family"),
                                allow_pickle=args.allow_pickle)
    if args.json:
        print(json.dumps({**summary, "effective_ranks": ranks} if ranks is not None else summary, indent=2))
    else:
        print(format_summary(summary))
        if ranks is not None:
            from sd_lora.tools.ranks import format_ranks

            print(format_ranks(ranks))
    return 0
