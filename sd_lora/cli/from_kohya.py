"""`sd-lora from-kohya [SCRIPT] --kohya_option value ... --out config.toml`: a kohya sd-scripts LoRA command line
(or its --config_file, or a --dataset_config alone) as an sd-lora config, with what was dropped and why."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_parser", "run"]


def add_parser(subparsers, name: str) -> None:
    p = subparsers.add_parser(
        name, help="translate a kohya sd-scripts command line into an sd-lora config",
        description="Translate kohya's train_network.py / sdxl_train_network.py options (and their --config_file "
                    "and --dataset_config) into an sd-lora config, key by key. Options that change what is trained "
                    "but have no sd-lora setting stop it with the reason; the rest are listed as comments.",
        epilog="example: sd-lora from-kohya --out my.toml -- train_network.py --pretrained_model_name_or_path "
               "model.safetensors --train_data_dir img --network_dim 16 --network_alpha 8")
    p.add_argument("--out", "-o", required=True, help="the sd-lora TOML config to write (never overwritten)")
    p.add_argument("kohya", nargs=argparse.REMAINDER, metavar="KOHYA_ARGS",
                   help="the kohya command line (put `--` before it)")


def run(args) -> int:
    from sd_lora.config.kohya.args import to_toml, translate_args
    from sd_lora.config.load import config_from_dict
    from sd_lora.errors import SdLoraError
    from sd_lora.fileio import atomic_write_text

    words = args.kohya[1:] if args.kohya[:1] == ["--"] else args.kohya
    if not words:
        raise SdLoraError("give the kohya command line after --, e.g. sd-lora from-kohya --out my.toml -- "
                          "train_network.py --train_data_dir img ...")
    out = Path(args.out)
    if out.exists():
        raise SdLoraError(f"--out {out} already exists; choose another name or remove it first")
    translation = translate_args(words)
    config_from_dict(translation.config, "the translated config")  # it must load as it is written
    header = "sd-lora config translated from kohya sd-scripts options by `sd-lora from-kohya`"
    atomic_write_text(out, to_toml(translation, header))
    for name, target in translation.mapped:
        print(f"  --{name} -> {target}")
    for name, why in translation.ignored:
        print(f"  --{name}: {why}")
    print(f"wrote {out}", file=sys.stderr)
    return 0
