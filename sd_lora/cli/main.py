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
    "caption": "caption",
    "captions": "captions",
    "masks": "masks",
    "dataset-report": "dataset_report",
    "studio": "studio",
    "from-kohya": "from_kohya",
}


def main(argv: list[str] | None = None) -> int:
    _printable_file_names()
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
    try:
        args, extras = parser.parse_known_args(argv)  # --help prints here
    except BrokenPipeError:
        _quiet_stdout()
        return 141
    if extras:  # a module may explain what it does not take (kohya options given to train)
        explain = getattr(modules[args.command], "explain_unknown", None)
        parser.error((explain and explain(extras)) or f"unrecognized arguments: {' '.join(extras)}")
    _expand_home(args)
    set_verbose(args.verbose or is_verbose())
    try:
        code = int(modules[args.command].run(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's exit
        return code
    except BrokenPipeError:
        _quiet_stdout()
        return 141  # what a command killed by SIGPIPE reports (128 + 13), as `cat X | head` does
    except SdLoraError as e:
        print(f"sd-lora {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        if not _is_disk_or_permission_fault(e):
            raise
        from sd_lora.fileio import write_failure_reason

        # a command without its own message for this: still one line with the path and what to do
        print(f"sd-lora {args.command}: error: a file could not be written or read: {write_failure_reason(e)}. "
              "Free some space or fix the permissions of that folder, then run again; outputs are written under "
              "temporary names and renamed only when complete, so no partial output was left.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def _is_disk_or_permission_fault(e: BaseException) -> bool:
    import errno

    from sd_lora.fileio import is_write_failure

    if not is_write_failure(e):
        return False
    if not isinstance(e, OSError):
        return True  # a Rust-backed library's I/O error (disk full, file too large)
    return e.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS)


def _printable_file_names() -> None:
    """A file name that is not valid UTF-8 reaches Python surrogate-escaped ('caf\\udce9.png'); in a UTF-8 locale
    printing it would raise UnicodeEncodeError mid-message, so such characters are printed escaped instead."""
    for stream in (sys.stdout, sys.stderr):
        if getattr(stream, "errors", None) == "strict" and hasattr(stream, "reconfigure"):
            stream.reconfigure(errors="backslashreplace")


def _quiet_stdout() -> None:
    """The reader of stdout went away (`sd-lora inspect X | head`): the rest of the output has nowhere to go, and
    Python's flush at exit must not raise again, so stdout now points at /dev/null."""
    import os

    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


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
