"""`sd-lora inspect FILE [--json]`: family, format, adapter type, ranks/alphas, modules, metadata, hashes."""

from __future__ import annotations

import json

__all__ = ["add_parser", "run"]


def add_parser(subparsers, name: str) -> None:
    p = subparsers.add_parser(name, help="describe an adapter file (LoRA/LoCon/LoHa/LoKr/DoRA, any format)")
    p.add_argument("file", help="adapter .safetensors file or peft adapter directory")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.add_argument("--allow-pickle", action="store_true", help="read a pickled .ckpt/.pt you trust")


def run(args) -> int:
    from sd_lora.formats.summary import format_summary, summarize_file

    summary = summarize_file(args.file, allow_pickle=args.allow_pickle)
    print(json.dumps(summary, indent=2) if args.json else format_summary(summary))
    return 0
