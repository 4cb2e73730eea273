"""`sd-lora train --dry-run`: the dataset plan from the config alone (no model is loaded)."""

from __future__ import annotations

__all__ = ["print_plan"]


def print_plan(cfg) -> None:
    from sd_lora.data import format_plan, make_plan, scan_dataset

    t = cfg.train
    scan = scan_dataset(cfg.data)
    for warning in scan.warnings:
        print(f"warning: {warning}")
    steps = dict(max_epochs=t.max_epochs) if t.max_epochs else dict(max_steps=t.max_steps)
    plan = make_plan(cfg.data, scan, batch_size=t.batch_size, gradient_accumulation_steps=t.gradient_accumulation_steps,
                     seed=t.seed, train_text_encoder=cfg.network.train_text_encoder, **steps)
    print(format_plan(plan))
    print(f"Model: {cfg.model.pretrained} · network: {cfg.network.type} rank {cfg.network.rank} alpha "
          f"{cfg.network.alpha} ({cfg.network.preset}) · output: {cfg.output.dir}/{cfg.output.name}.safetensors")
