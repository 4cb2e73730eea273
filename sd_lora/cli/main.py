"""`sd-lora` dispatcher: one module per subcommand, each exposing `add_parser` and `run`."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from sd_lora.errors import SdLoraError
from sd_lora.logs import is_verbose, set_verbose

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
        sub.choices[name].add_argument("--verbose", action="store_true",
                                       help="show the libraries' own messages and progress bars too")
    args = parser.parse_args(argv)
    _expand_home(args)
    set_verbose(args.verbose or is_verbose())
    try:
        return int(modules[args.command].run(args) or 0)
    except SdLoraError as e:
        print(f"sd-lora {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _expand_home(args: argparse.Namespace) -> None:
    """`~/x` in any path argument means the home folder, as in a shell (a quoted or config-file `~` never reaches
    one): never a folder named `~` in the current one. Prompt text is left as typed."""
    def expand(value):
        if isinstance(value, str) and (value == "~" or value.startswith("~/")):
            return os.path.expanduser(value)
        return [expand(v) for v in value] if isinstance(value, list) else value

    for name, value in vars(args).items():
        if "prompt" not in name:
            setattr(args, name, expand(value))


if __name__ == "__main__":
    sys.exit(main())
