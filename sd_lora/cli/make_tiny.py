"""`sd-lora make-tiny DIR [--family sd1|sd2|sdxl|sd3|flux]`: a tiny random model of a family, offline, in seconds."""

from __future__ import annotations

__all__ = ["add_parser", "run"]


def add_parser(subparsers, name: str) -> None:
    from sd_lora.models.families import DEFAULT_FAMILY, FAMILIES

    p = subparsers.add_parser(name, help="write a tiny randomly initialised diffusers model of a family (offline)",
                              description="Write a tiny SD-architecture model with random weights, for smoke tests "
                                          "and CI. It trains and generates like a real one but draws noise.")
    p.add_argument("out", help="output directory (a diffusers model folder)")
    p.add_argument("--family", choices=sorted(FAMILIES), default=DEFAULT_FAMILY)
    p.add_argument("--seed", type=int, default=0)


def run(args) -> int:
    from pathlib import Path

    import os
    import shutil
    import tempfile

    from sd_lora.errors import SdLoraError
    from sd_lora.fileio import give_umask_modes, remove_stale_temporaries, write_errors
    from sd_lora.models.families import get_family

    out = Path(args.out).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SdLoraError(f"{out} exists and is not empty; choose a new folder")
    with write_errors(f"the tiny model {out}", ", or choose another folder"):
        out.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
        # written whole beside the target, then renamed: a full disk leaves no half model under the final name
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
        try:
            get_family(args.family).save_tiny(tmp, seed=args.seed)
            give_umask_modes(tmp)
            if out.exists():
                out.rmdir()  # empty (checked above)
            os.replace(tmp, out)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"wrote a tiny {args.family} model to {out}")
    return 0
