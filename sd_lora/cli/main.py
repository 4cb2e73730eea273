"""`sd-lora` dispatcher: one module per subcommand, each exposing `add_parser` and `run`."""

from __future__ import annotations

import argparse
import importlib
import sys

from sd_lora.errors import SdLoraError

__all__ = ["main"]

# subcommand -> module under sd_lora.cli
SUBCOMMANDS = {
    "train": "train",
    "generate": "generate",
    "inspect": "inspect",
    "convert": "convert",
    "make-tiny": "make_tiny",
    "merge": "merge",
    "resize": "resize",
    "extract": "extract",
    "bake": "bake",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="sd-lora", description="Train and use Stable Diffusion LoRA adapters.")
    sub = parser.add_subparsers(dest="command", required=True)
    modules = {}
    for name, module_name in SUBCOMMANDS.items():
        try:
            module = importlib.import_module(f"sd_lora.cli.{module_name}")
        except ModuleNotFoundError as e:
            if e.name != f"sd_lora.cli.{module_name}":
                raise
            continue
        modules[name] = module
        module.add_parser(sub, name)
    args = parser.parse_args(argv)
    try:
        return int(modules[args.command].run(args) or 0)
    except SdLoraError as e:
        print(f"sd-lora {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
