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
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run in output.dir (its adapter, states, logs, samples); without it a "
                        "second run there is refused unless it resumes (train.resume = 'latest')")


def _validate(cfg, dumped: str) -> int:
    """The config, the model source (a path exists; a hub id is cached or can be downloaded) and every optional
    package the config needs, all reported at once."""
    from sd_lora.errors import SdLoraError
    from sd_lora.models.load import describe_source
    from sd_lora.train.preflight import missing_packages

    problems = missing_packages(cfg, try_import=True)
    try:
        source = describe_source(cfg.model.pretrained, cfg.model.revision)
    except SdLoraError as e:
        problems.append(str(e))
    if problems:
        raise SdLoraError(f"the config has {len(problems)} problem(s):\n  " + "\n  ".join(problems))
    print(dumped)
    print(f"model: {source}")
    if "HF_HUB_OFFLINE=1 forbids" in source:  # the config is fine; this machine cannot run it as it is
        print(f"warning: training would stop here: download the model once with network access "
              f"(`hf download {cfg.model.pretrained}`), or give a local path")
    print("config OK")
    return 0


def run(args) -> int:
    from sd_lora.config.load import dump_config, load_config

    from sd_lora.train.plan import with_model_defaults

    cfg = with_model_defaults(load_config(args.config, args.overrides))
    if args.validate:
        return _validate(cfg, dump_config(cfg))
    if args.dry_run:
        from sd_lora.train.plan import print_plan

        print_plan(cfg)
        return 0
    from sd_lora.train.recipe import run_training

    result = run_training(cfg, overwrite=args.overwrite)
    if result.coverage is not None:  # the process that wrote the files (the main one)
        print(f"adapter: {result.adapter_path}\nconfig:  {result.config_path}")
    return 0
