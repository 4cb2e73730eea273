"""`sd-lora train --config FILE [--set section.key=value ...] [--dry-run]`, or from kohya: `--dataset-config F`,
`--kohya-args "<a kohya train_network.py command line>"`."""

from __future__ import annotations

__all__ = ["add_parser", "run", "explain_unknown"]


def add_parser(subparsers, name: str) -> None:
    p = subparsers.add_parser(name, help="train a LoRA adapter from a TOML config",
                              description="Train a LoRA adapter. Works unchanged under `accelerate launch`.")
    p.add_argument("--config", "-c", help="TOML config file (see train_configs/); omit to use defaults + --set")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="override one config value, e.g. --set train.max_steps=100 (repeatable)")
    p.add_argument("--dataset-config", metavar="FILE",
                   help="a kohya sd-scripts dataset_config TOML (same as --set data.config=FILE)")
    p.add_argument("--kohya-args", metavar="'ARGS'",
                   help="a kohya train_network.py / sdxl_train_network.py command line (one quoted string), "
                        "translated into the config instead of --config; `sd-lora from-kohya` writes it to a file")
    p.add_argument("--validate", action="store_true", help="check the config and exit (loads no model)")
    p.add_argument("--dry-run", action="store_true", help="print the training plan and exit (loads no UNet)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace an earlier run in output.dir (its adapter, states, logs, samples); without it a "
                        "second run there is refused unless it resumes (train.resume = 'latest')")


def _validate(cfg, dumped: str) -> int:
    """The config, the model source (a path exists; a hub id is cached or can be downloaded) and every optional
    package the config needs, all reported at once."""
    from sd_lora.errors import SdLoraError
    from sd_lora.models.families import get_family, settings_problems
    from sd_lora.models.load import describe_source, known_family
    from sd_lora.train.preflight import missing_packages

    problems = missing_packages(cfg, try_import=True)
    try:
        source = describe_source(cfg.model.pretrained, cfg.model.revision)
        m = cfg.model
        family = known_family(m.pretrained, m.family, m.revision, m.allow_pickle)
        if family:  # what the model's family cannot train with (another family's keys, DDPM-only options)
            problems += settings_problems(get_family(family), cfg)
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


def explain_unknown(extras: list[str]) -> str | None:
    """An error for kohya options given straight to `sd-lora train`, naming their sd-lora keys."""
    from sd_lora.config.kohya.names import kohya_target

    options = [e.split("=", 1)[0] for e in extras if e.startswith("--")]
    known = [(o, kohya_target(o)) for o in options if kohya_target(o)]
    if not known:
        return None
    listed = ", ".join(f"{o} is {t}" for o, t in known)
    return (f"unrecognized arguments: {' '.join(extras)}\nthese are kohya sd-scripts options ({listed}); pass the "
            "whole kohya command line as --kohya-args \"...\", translate it once with `sd-lora from-kohya ... --out "
            "config.toml`, or set the keys with --set SECTION.KEY=VALUE")


def _load(args):
    from sd_lora.config.load import load_config

    overrides = list(args.overrides) + ([f"data.config={_quoted(args.dataset_config)}"]
                                        if args.dataset_config else [])
    if not args.kohya_args:
        return load_config(args.config, overrides)
    import sys

    from sd_lora.config.kohya.args import translate_args
    from sd_lora.config.load import config_from_dict, parse_overrides
    from sd_lora.errors import SdLoraError

    if args.config:
        raise SdLoraError("give either --config or --kohya-args, not both (add sd-lora keys with --set)")
    translation = translate_args(args.kohya_args)
    for name, why in translation.ignored:
        print(f"note: kohya --{name}: {why}", file=sys.stderr)
    return config_from_dict(translation.config, "--kohya-args", None, parse_overrides(overrides) or None)


def _quoted(path: str) -> str:
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


def run(args) -> int:
    from sd_lora.config.load import dump_config
    from sd_lora.train.plan import with_model_defaults

    cfg = with_model_defaults(_load(args))
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
