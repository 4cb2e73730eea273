"""`sd-lora convert IN OUT --to community|diffusers [--family sd1|sd2|sdxl]`: lossless format change."""

from __future__ import annotations

__all__ = ["add_parser", "run"]


def add_parser(subparsers, name: str) -> None:
    p = subparsers.add_parser(name, help="convert an adapter file between community and diffusers formats")
    p.add_argument("input", help="adapter .safetensors file")
    p.add_argument("output", help="file to write (atomically)")
    p.add_argument("--to", required=True, choices=["community", "diffusers"], help="target format")
    p.add_argument("--family", choices=["sd1", "sd2", "sdxl"], help="model family when the file does not say")
    p.add_argument("--allow-pickle", action="store_true", help="read a pickled .ckpt/.pt you trust")


def run(args) -> int:
    from sd_lora.formats.convert import convert_file

    out = convert_file(args.input, args.output, args.to, args.family, allow_pickle=args.allow_pickle)
    print(f"wrote {out} ({args.to})")
    return 0
