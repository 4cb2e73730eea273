"""`sd-lora convert IN OUT --to community|diffusers [--family FAMILY]`: lossless format change."""

from __future__ import annotations

__all__ = ["add_parser", "run"]


def add_parser(subparsers, name: str) -> None:
    from sd_lora.models.families import FAMILY_CHOICES

    p = subparsers.add_parser(name, help="convert an adapter file between community and diffusers formats")
    p.add_argument("input", help="adapter .safetensors file")
    p.add_argument("output", help="file to write (atomically)")
    p.add_argument("--to", required=True, choices=["community", "diffusers"], help="target format")
    p.add_argument("--family", choices=FAMILY_CHOICES,
                   help="model family when the file does not say")
    p.add_argument("--allow-pickle", action="store_true", help="read a pickled .ckpt/.pt you trust")


def run(args) -> int:
    from pathlib import Path

    from sd_lora.errors import SdLoraError
    from sd_lora.fileio import write_errors
    from sd_lora.formats.convert import convert_file
    from sd_lora.formats.imports import load_adapter_file

    target = Path(args.output)
    if target.is_dir():
        raise SdLoraError(f"output {target} is a folder; give the path of the file to write, e.g. "
                          f"{target / (Path(args.input).stem + '.' + args.to + '.safetensors')}")
    if not target.parent.is_dir():
        raise SdLoraError(f"output {target}: the folder {target.parent} does not exist; create it first")
    load_adapter_file(args.input, allow_pickle=args.allow_pickle)  # NaN/inf or mismatched ranks: refused here
    with write_errors(str(target), ", or choose another output path"):
        out = convert_file(args.input, args.output, args.to, args.family, allow_pickle=args.allow_pickle)
    print(f"wrote {out} ({args.to})")
    return 0
