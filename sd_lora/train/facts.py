"""What a finished (or checkpointed) run knows about itself, for the adapter file's metadata."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import datetime

from sd_lora.train.kohya_facts import OPTIMIZER_CLASSES, kohya_fields, kohya_model_name
from sd_lora.train.samples import sample_guidance_rescale

__all__ = ["RunFacts", "training_facts"]


@dataclass(frozen=True)
class RunFacts:
    """What a run knows at save time beyond its config and its data scan (all plain values)."""

    family: str
    prediction_type: str
    base_model_name: str
    base_model_location: str
    global_step: int
    epoch: int
    max_steps: int
    steps_per_epoch: int | None = None  # None before the data loader is built
    batches_per_epoch: int | None = None
    dataset: object = None  # the training dataset (its buckets), when built
    validation_images: int = 0
    num_processes: int = 1
    latents_cached: bool = False
    started_at: datetime | None = None
    finished_at: datetime | None = None
    init_weights: dict | None = None  # the parent LoRA's record (sd_lora.train.init_weights)
    rank_budget: object = None  # AdaLoRA's budget (sd_lora.adapters.adalora.RankBudget) when used
    samples: list[dict] | None = None  # each sample's full record (sd_lora.train.samples.sample_records)


def training_facts(cfg, scan, run: RunFacts) -> dict:
    """What this run knows, in the keys `sd_lora.formats.community_metadata` documents."""
    c, t, n, sc = cfg, cfg.train, cfg.network, scan
    adapter_type = "dora" if n.dora else ("locon" if n.preset == "full" and n.type == "lora" else n.type)
    network_args = {"preset": n.preset}
    if n.conv_rank or n.preset == "full":
        network_args.update(conv_dim=n.conv_rank or n.rank, conv_alpha=n.conv_alpha or n.alpha)
    if n.rslora:
        network_args["rslora"] = True
    for key in ("rank_dropout", "module_dropout"):
        if getattr(n, key):
            network_args[key] = getattr(n, key)
    for key in ("block_dims", "block_alphas", "conv_block_dims", "conv_block_alphas"):
        if getattr(n, key):
            network_args[key] = ",".join(f"{v:g}" for v in getattr(n, key))
    if n.block_lr_weights:  # kohya's names: 12 down, 1 mid, 12 up
        w = [f"{v:g}" for v in n.block_lr_weights]
        network_args.update(down_lr_weight=",".join(w[:12]), mid_lr_weight=w[12], up_lr_weight=",".join(w[13:]))
    budget = run.rank_budget
    if budget is not None:  # the method and its budget; the file itself is a plain LoRA with per-module ranks
        kept = sum(sum(m.values()) for m in budget.ranks().values())
        network_args.update(method="adalora", init_r=n.init_r, target_r=n.target_r,
                            rank_budget=budget.allocator.target_bgt, ranks_kept=kept)
    elif n.type in ("oft", "boft"):
        network_args.update(method=n.type, oft_block_size=n.oft_block_size, oft_blocks=n.oft_blocks,
                            saved_as="exact weight update in LoRA form")
    tags: dict = {}
    for sub in sc.subsets:
        counts = tags.setdefault(sub.spec.dir.name, {})
        for rec in sub.records:
            for tag in filter(None, (x.strip() for x in rec.caption.split(","))):
                counts[tag] = counts.get(tag, 0) + 1
    return {
        "family": run.family, "prediction_type": run.prediction_type, "adapter_type": adapter_type,
        "network_args": network_args, "title": c.output.name, "output_name": c.output.name,
        "resolution": c.data.resolution, "steps": run.global_step, "max_train_steps": run.max_steps,
        "epochs": math.ceil(run.max_steps / run.steps_per_epoch) if run.steps_per_epoch else run.epoch,
        "learning_rate": t.learning_rate, "unet_lr": t.unet_lr or t.learning_rate,
        "lr_scheduler": t.lr_scheduler, "lr_warmup_steps": t.lr_warmup_steps, "optimizer": OPTIMIZER_CLASSES.get(t.optimizer, t.optimizer),
        "seed": t.seed, "num_train_images": sc.train_images, "num_reg_images": sc.reg_images,
        "batch_size": t.batch_size, "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "gradient_checkpointing": t.gradient_checkpointing, "mixed_precision": t.mixed_precision,
        # the kohya keys (ss_noise_offset, ss_clip_skip, ...) are kohya_fields' alone; clip_skip here is the
        # model-spec encoder layer only
        "encoder_layer": t.clip_skip, "loss_type": t.loss_type,
        "masked_loss": bool(c.data.alpha_mask or c.data.mask_dir) or None,
        "ema_decay": t.ema_decay, "exported_weights": "ema" if t.ema_decay else "trained",
        "samples": run.samples if c.sample.every_n_steps and c.sample.prompts else None, "session_id": uuid.uuid4().int % 2**31,
        "training_started_at": run.started_at, "training_finished_at": run.finished_at,
        "base_model_name": kohya_model_name(run.base_model_location, run.base_model_name),
        "dataset_dirs": {s.spec.dir.name: {"n_repeats": s.spec.num_repeats, "img_count": len(s.records)}
                         for s in sc.subsets},
        "tag_frequency": tags,
        "init_weights": run.init_weights,
        "kohya_fields": kohya_fields(cfg, scan, run),
        "trigger_words": [c.data.trigger_word] if c.data.trigger_word else [],
        "inference": {"scheduler": c.sample.scheduler, "steps": c.sample.steps,
                      "guidance": c.sample.guidance_scale, "resolution": c.data.resolution,
                      "clip_skip": t.clip_skip or 1, "zero_terminal_snr": t.zero_terminal_snr,
                      "guidance_rescale": sample_guidance_rescale(c),
                      "sample_prompts": c.sample.prompts, "negative_prompt": c.sample.negative_prompt,
                      "trigger_words": [c.data.trigger_word] if c.data.trigger_word else []},
    }
