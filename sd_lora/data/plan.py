"""The dataset plan printed before training (and by --dry-run): what is trained on, for how long, how.

Computed from the scan alone: no pixel is decoded and no model is needed.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path

from sd_lora.config.data import DataConfig
from sd_lora.data.buckets import Size
from sd_lora.data.cache import CACHE_DIRNAME, choose_caches
from sd_lora.data.dataset import build_dataset, has_validation
from sd_lora.data.loader import count_batches
from sd_lora.data.scan import ImageRecord, ScanReport, SubsetScan

__all__ = ["SubsetPlan", "TrainingPlan", "make_plan", "format_plan", "samples_seen", "run_length"]


def run_length(batches_per_epoch: int, gradient_accumulation_steps: int = 1, max_steps: int | None = None,
               max_epochs: int | None = None) -> tuple[int, int, int]:
    """(optimiser steps per epoch, optimiser steps of the run, epochs): the one formula the plan and the training
    loop share. The optimiser steps at the end of every epoch, so an epoch of B batches is ceil(B / accumulation)
    steps, its last window shorter when the accumulation does not divide B (kohya counts the same way)."""
    per_epoch = max(1, math.ceil(batches_per_epoch / gradient_accumulation_steps))
    if max_epochs:
        return per_epoch, max_epochs * per_epoch, max_epochs
    return per_epoch, max_steps or 0, math.ceil((max_steps or 0) / per_epoch)


def samples_seen(samples_per_epoch: int, batch_size: int, gradient_accumulation_steps: int = 1,
                 num_processes: int = 1, max_steps: int | None = None, max_epochs: int | None = None) -> int:
    """Samples one process trains on in the whole run (what an 'auto' cache weighs its one-off encoding against)."""
    if max_epochs:
        return max_epochs * math.ceil(samples_per_epoch / num_processes)
    return (max_steps or 0) * batch_size * gradient_accumulation_steps


@dataclass
class SubsetPlan:
    name: str
    where: str
    images: int
    repeats: int
    is_reg: bool
    samples: int  # per epoch
    to_generate: int = 0


@dataclass
class TrainingPlan:
    subsets: list[SubsetPlan]
    train_images: int
    reg_images: int
    samples_per_epoch: int
    batch_size: int
    gradient_accumulation_steps: int
    num_processes: int
    batches_per_epoch: int  # per process
    steps_per_epoch: int  # optimiser steps (see run_length)
    max_steps: int
    epochs: int
    buckets: dict[Size, int]  # bucket (w, h) -> distinct images
    validation_images: int = 0
    skipped_files: int = 0
    prior_loss_weight: float = 1.0
    cached: list[str] = field(default_factory=list)

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size * self.gradient_accumulation_steps * self.num_processes


def make_plan(cfg: DataConfig, scan: ScanReport, *, batch_size: int, gradient_accumulation_steps: int = 1,
              num_processes: int = 1, max_steps: int | None = None, max_epochs: int | None = None,
              seed: int = 0, train_text_encoder: bool = False) -> TrainingPlan:
    """Numbers for `format_plan`. Give max_steps (epochs are derived) or max_epochs (steps are derived).

    Class images still to be generated count as square images at data.resolution.
    """
    if (max_steps is None) == (max_epochs is None):
        raise ValueError("give exactly one of max_steps and max_epochs")
    planned = _with_pending_class_images(scan, cfg.resolution)
    ds = build_dataset(cfg, planned, split="train", seed=seed)
    per_entry = Counter(ds.entry_buckets())
    batches = count_batches(list(per_entry.values()), batch_size, num_processes)
    per_epoch, steps, epochs = run_length(batches, gradient_accumulation_steps, max_steps, max_epochs)
    entries = Counter(ds.entries)
    subsets = []
    for sub, orig in zip(planned.subsets, scan.subsets):
        idx = [i for i, it in enumerate(ds.items) if it.spec is sub.spec]
        subsets.append(SubsetPlan(sub.spec.name, sub.spec.where, len(sub.records), sub.spec.num_repeats,
                                  sub.spec.is_reg, sum(entries[i] for i in idx), orig.missing_class_images))
    validation = len(build_dataset(cfg, scan, split="validation", seed=seed)) if has_validation(cfg) else 0
    return TrainingPlan(
        subsets=subsets, train_images=sum(s.images for s in subsets if not s.is_reg),
        reg_images=sum(s.images for s in subsets if s.is_reg), samples_per_epoch=len(ds), batch_size=batch_size,
        gradient_accumulation_steps=gradient_accumulation_steps, num_processes=num_processes,
        batches_per_epoch=batches, steps_per_epoch=per_epoch, max_steps=steps,
        epochs=epochs, buckets=dict(Counter(it.bucket for it in ds.items)), validation_images=validation,
        skipped_files=len(scan.skipped), prior_loss_weight=cfg.prior_loss_weight,
        cached=_cache_lines(cfg, ds, train_text_encoder, samples_seen(
            len(ds), batch_size, gradient_accumulation_steps, num_processes, max_steps, max_epochs)))


def format_plan(plan: TrainingPlan) -> str:
    lines = ["Dataset plan"]
    for s in plan.subsets:
        if s.is_reg:
            gen = f" ({s.to_generate} to generate)" if s.to_generate else ""
            lines.append(f"  regularisation '{s.name}' [{s.where}]: {s.images} images{gen} -> {s.samples} samples "
                         f"per epoch (balanced to the training samples), loss weight {plan.prior_loss_weight:g}")
        else:
            lines.append(f"  subset '{s.name}' [{s.where}]: {s.images} images x {s.repeats} repeats = "
                         f"{s.samples} samples")
    lines += [
        f"  training images: {plan.train_images}, regularisation images: {plan.reg_images}"
        + (f", skipped files: {plan.skipped_files}" if plan.skipped_files else ""),
        f"  validation images: {plan.validation_images}" if plan.validation_images else "  validation: off",
        f"  samples per epoch: {plan.samples_per_epoch}",
        f"  batch: {plan.batch_size} per process x {plan.gradient_accumulation_steps} accumulation x "
        f"{plan.num_processes} process(es) = {plan.effective_batch_size} effective",
        f"  batches per epoch (per process): {plan.batches_per_epoch} = {plan.steps_per_epoch} optimiser steps"
        + _short_window(plan),
        f"  training length: {plan.max_steps} steps = {plan.epochs} epoch(s)",
        "  buckets (w x h: images):",
    ]
    lines += [f"    {w}x{h}: {n}" for (w, h), n in sorted(plan.buckets.items(), key=lambda kv: (-kv[1], kv[0]))]
    lines.append("  cache: " + ("; ".join(plan.cached) if plan.cached else "nothing cached"))
    return "\n".join(lines)


def _short_window(plan: TrainingPlan) -> str:
    last = plan.batches_per_epoch - (plan.steps_per_epoch - 1) * plan.gradient_accumulation_steps
    return f" (the last of {last} batch{'es' if last > 1 else ''})" if last < plan.gradient_accumulation_steps else ""


def _with_pending_class_images(scan: ScanReport, resolution: int) -> ScanReport:
    subsets = []
    for sub in scan.subsets:
        pending = [ImageRecord(Path(f"<class image {i + 1} to generate>"), sub.spec.class_prompt or "",
                               "class_tokens", resolution, resolution) for i in range(sub.missing_class_images)]
        subsets.append(SubsetScan(sub.spec, sub.records + pending))
    return replace(scan, subsets=subsets)


def _cache_lines(cfg: DataConfig, ds, train_text_encoder: bool, seen: int) -> list[str]:
    choice = choose_caches(cfg, ds, train_text_encoder, seen)
    budget = f"{cfg.cache_memory_gb:g} GiB" if cfg.cache_memory_gb is not None else "half the free memory"
    lines = []
    if choice.latents:
        where = f"on disk in each image folder's {CACHE_DIRNAME}/" if cfg.cache_latents_to_disk else \
            f"in memory (on disk past data.cache_memory_gb = {budget})"
        flip = " (both orientations)" if any(it.spec.flip_aug for it in ds.items) else ""
        where = where.replace(" (on disk", f"{flip} (on disk", 1) if flip and "(on disk" in where else where + flip
        lines.append(f"VAE latents {where} [{choice.latents_reason}]")
    else:
        lines.append(f"VAE latents NOT cached [{choice.latents_reason}]")
    if choice.text:
        where = f"on disk in {CACHE_DIRNAME}/text/" if cfg.cache_text_encoder_outputs_to_disk else "in memory"
        lines.append(f"text-encoder outputs {where} [{choice.text_reason}]")
    else:
        lines.append(f"text-encoder outputs NOT cached: {choice.text_reason}")
    return lines
