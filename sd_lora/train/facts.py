"""What a finished (or checkpointed) run knows about itself, for the adapter file's metadata."""

from __future__ import annotations

import math
import uuid

from sd_lora.train.kohya_facts import OPTIMIZER_CLASSES, kohya_fields, kohya_model_name
from sd_lora.train.samples import sample_guidance_rescale

__all__ = ["training_facts"]


def training_facts(recipe) -> dict:
    """What this run knows, in the keys `sd_lora.formats.community_metadata` documents."""
    c, t, n, sc = recipe.cfg, recipe.cfg.train, recipe.cfg.network, recipe.scan
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
    budget = getattr(recipe, "rank_budget", None)
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
        "family": recipe.family.name, "prediction_type": recipe.prediction_type, "adapter_type": adapter_type,
        "network_args": network_args, "title": c.output.name, "output_name": c.output.name,
        "resolution": c.data.resolution, "steps": recipe.state.global_step, "max_train_steps": recipe.max_steps,
        "epochs": math.ceil(recipe.max_steps / recipe.steps_per_epoch) if hasattr(recipe, "steps_per_epoch")
        else recipe.state.epoch, "learning_rate": t.learning_rate, "unet_lr": t.unet_lr or t.learning_rate,
        "text_encoder_lr": (t.text_encoder_lr or t.learning_rate) if n.train_text_encoder else None,
        "lr_scheduler": t.lr_scheduler, "lr_warmup_steps": t.lr_warmup_steps, "optimizer": OPTIMIZER_CLASSES.get(t.optimizer, t.optimizer),
        "seed": t.seed, "num_train_images": sc.train_images, "num_reg_images": sc.reg_images,
        "batch_size": t.batch_size, "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "gradient_checkpointing": t.gradient_checkpointing, "mixed_precision": t.mixed_precision,
        "noise_offset": t.noise_offset or None, "min_snr_gamma": t.min_snr_gamma,
        "caption_dropout_rate": c.data.caption_dropout_rate or None,
        "clip_skip": t.clip_skip, "max_token_length": c.data.max_token_length,
        "multires_noise_iterations": t.multires_noise_iterations or None,
        "multires_noise_discount": t.multires_noise_discount if t.multires_noise_iterations else None,
        "ip_noise_gamma": t.ip_noise_gamma or None, "debiased_estimation": t.debiased_estimation_loss or None,
        "loss_type": t.loss_type, "huber_schedule": t.huber_schedule if t.loss_type != "l2" else None,
        "huber_c": t.huber_c if t.loss_type != "l2" else None, "zero_terminal_snr": t.zero_terminal_snr or None,
        "network_dropout": n.dropout or None, "masked_loss": bool(c.data.alpha_mask or c.data.mask_dir) or None,
        "ema_decay": t.ema_decay, "exported_weights": "ema" if t.ema_decay else "trained",
        "samples": recipe.sample_records(recipe.state.global_step)
        if c.sample.every_n_steps and c.sample.prompts else None, "session_id": uuid.uuid4().int % 2**31,
        "training_started_at": getattr(recipe, "started_at", None),
        "training_finished_at": getattr(recipe, "finished_at", None),
        "base_model_name": kohya_model_name(recipe.model_info.location, recipe.model_info.name),
        "dataset_dirs": {s.spec.dir.name: {"n_repeats": s.spec.num_repeats, "img_count": len(s.records)}
                         for s in sc.subsets},
        "tag_frequency": tags,
        "init_weights": getattr(recipe, "init_weights", None),
        "kohya_fields": kohya_fields(recipe),
        "trigger_words": [c.data.trigger_word] if c.data.trigger_word else [],
        "inference": {"scheduler": c.sample.scheduler, "steps": c.sample.steps,
                      "guidance": c.sample.guidance_scale, "resolution": c.data.resolution,
                      "clip_skip": t.clip_skip or 1, "zero_terminal_snr": t.zero_terminal_snr,
                      "guidance_rescale": sample_guidance_rescale(c),
                      "sample_prompts": c.sample.prompts, "negative_prompt": c.sample.negative_prompt,
                      "trigger_words": [c.data.trigger_word] if c.data.trigger_word else []},
    }
