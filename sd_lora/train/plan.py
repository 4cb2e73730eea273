"""`sd-lora train --dry-run`: the dataset plan from the config alone (no model is loaded)."""

from __future__ import annotations

__all__ = ["plan_for", "print_plan", "with_model_defaults"]


def with_model_defaults(cfg):
    """`cfg` with the sizes the user left out taken from the model's native resolution (builtin:tiny is 32 px,
    SDXL 1024): `data.resolution`, and bucket bounds that contain it. Read from config files; no model loads."""
    from sd_lora.config.load import with_defaults
    from sd_lora.models.load import native_resolution

    native = native_resolution(cfg.model.pretrained, cfg.model.revision)
    if native is None or "data.resolution" in getattr(cfg, "given", {"data.resolution"}):
        return cfg
    d = cfg.data
    values = {"resolution": native}
    if not d.min_bucket_reso <= native <= d.max_bucket_reso:
        step = 8 if native < 256 else 64
        values.update(bucket_reso_steps=step, min_bucket_reso=max(step, native // 2 // step * step),
                      max_bucket_reso=native * 2)
    return with_defaults(cfg, {"data": values})


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
    from sd_lora.train.memory_plan import dry_run_lines
    from sd_lora.train.precision import with_resolved_precision

    scan = scan_dataset(cfg.data)
    for warning in scan.warnings:
        print(f"warning: {warning}")
    print(format_plan(plan_for(cfg, scan)))
    cfg, precision_line = with_resolved_precision(cfg)
    print(precision_line)
    for line in dry_run_lines(cfg, scan):
        print(line)
    print(f"Model: {describe_source(cfg.model.pretrained, cfg.model.revision)} · network: {_network(cfg.network)} "
          f"({cfg.network.preset}) · output: {cfg.output.dir}/{cfg.output.name}.safetensors")


def _network(n) -> str:
    if n.type == "adalora":  # the budget: each module starts at init_r, the average ends at target_r
        return f"adalora ranks init_r {n.init_r} -> budget target_r {n.target_r} x modules, alpha {n.alpha}"
    if n.type in ("oft", "boft"):
        blocks = f"block size {n.oft_block_size}" if n.oft_block_size else f"{n.oft_blocks} blocks"
        return f"{n.type} {blocks}"
    return f"{n.type} rank {n.rank} alpha {n.alpha}"
