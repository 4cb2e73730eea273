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
    print(f"Model: {describe_source(cfg.model.pretrained, cfg.model.revision)} · network: {_network(cfg.network)} "
          f"({cfg.network.preset}) · output: {cfg.output.dir}/{cfg.output.name}.safetensors")


def _network(n) -> str:
    if n.type == "adalora":  # the budget: each module starts at init_r, the average ends at target_r
        return f"adalora ranks init_r {n.init_r} -> budget target_r {n.target_r} x modules, alpha {n.alpha}"
    if n.type in ("oft", "boft"):
        blocks = f"block size {n.oft_block_size}" if n.oft_block_size else f"{n.oft_blocks} blocks"
        return f"{n.type} {blocks}"
    return f"{n.type} rank {n.rank} alpha {n.alpha}"
