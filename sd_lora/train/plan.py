"""`sd-lora train --dry-run`: the dataset plan from the config alone (no model is loaded)."""

from __future__ import annotations

__all__ = ["plan_for", "print_plan"]


def plan_for(cfg, scan, num_processes: int = 1):
    """The training plan of `cfg` over a scanned dataset (what `train` prints before any model loads)."""
    from sd_lora.data import make_plan

    t = cfg.train
    steps = dict(max_epochs=t.max_epochs) if t.max_epochs else dict(max_steps=t.max_steps)
    return make_plan(cfg.data, scan, batch_size=t.batch_size, gradient_accumulation_steps=t.gradient_accumulation_steps,
                     num_processes=num_processes, seed=t.seed, train_text_encoder=cfg.network.train_text_encoder,
                     **steps)


def print_plan(cfg) -> None:
    from sd_lora.data import format_plan, scan_dataset
    from sd_lora.models.load import describe_source

    scan = scan_dataset(cfg.data)
    for warning in scan.warnings:
        print(f"warning: {warning}")
    print(format_plan(plan_for(cfg, scan)))
    print(f"Model: {describe_source(cfg.model.pretrained, cfg.model.revision)} · network: {cfg.network.type} rank {cfg.network.rank} alpha "
          f"{cfg.network.alpha} ({cfg.network.preset}) · output: {cfg.output.dir}/{cfg.output.name}.safetensors")
