"""`sd-lora train --config FILE [--set section.key=value ...] [--dry-run]`."""

from __future__ import annotations

__all__ = ["add_parser", "run"]


def add_parser(subparsers, name: str) -> None:
    p = subparsers.add_parser(name, help="train a LoRA adapter from a TOML config",
                              description="Train a LoRA adapter. Works unchanged under `accelerate launch`.")
    p.add_argument("--config", "-c", help="TOML config file (see train_configs/); omit to use defaults + --set")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value, e.g. --set train.max_steps=100 (repeatable)")
    p.add_argument("--validate", action="store_true", help="check the config and exit (loads no model)")
    p.add_argument("--dry-run", action="store_true", help="print the training plan and exit (loads no UNet)")


def run(args) -> int:
    from sd_lora.config.load import dump_config, load_config

    cfg = load_config(args.config, args.overrides)
    if args.validate:
        from sd_lora.models.load import describe_source

        print(dump_config(cfg))
        print(f"model: {describe_source(cfg.model.pretrained, cfg.model.revision)}")
        print("config OK")
        return 0
    if args.dry_run:
        from sd_lora.train.plan import print_plan

        print_plan(cfg)
        return 0
    from sd_lora.train.recipe import run_training

    result = run_training(cfg)
    if result.coverage is not None:  # the process that wrote the files (the main one)
        print(f"adapter: {result.adapter_path}\nconfig:  {result.config_path}")
    return 0
