"""What a finished (or checkpointed) run knows about itself, for the adapter file's metadata."""

from __future__ import annotations

import uuid

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
    tags: dict = {}
    for sub in sc.subsets:
        counts = tags.setdefault(sub.spec.dir.name, {})
        for rec in sub.records:
            for tag in filter(None, (x.strip() for x in rec.caption.split(","))):
                counts[tag] = counts.get(tag, 0) + 1
    return {
        "family": recipe.family, "prediction_type": recipe.prediction_type, "adapter_type": adapter_type,
        "network_args": network_args, "title": c.output.name, "output_name": c.output.name,
        "resolution": c.data.resolution, "steps": recipe.state.global_step, "max_train_steps": recipe.max_steps,
        "epochs": recipe.state.epoch, "learning_rate": t.learning_rate, "unet_lr": t.unet_lr or t.learning_rate,
        "text_encoder_lr": (t.text_encoder_lr or t.learning_rate) if n.train_text_encoder else None,
        "lr_scheduler": t.lr_scheduler, "lr_warmup_steps": t.lr_warmup_steps, "optimizer": t.optimizer,
        "seed": t.seed, "num_train_images": sc.train_images, "num_reg_images": sc.reg_images,
        "batch_size": t.batch_size, "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "gradient_checkpointing": t.gradient_checkpointing, "mixed_precision": t.mixed_precision,
        "noise_offset": t.noise_offset or None, "min_snr_gamma": t.min_snr_gamma,
        "caption_dropout_rate": c.data.caption_dropout_rate or None, "session_id": uuid.uuid4().int % 2**31,
        "training_started_at": getattr(recipe, "started_at", None),
        "training_finished_at": getattr(recipe, "finished_at", None),
        "base_model_name": recipe.model_info.name,
        "dataset_dirs": {s.spec.dir.name: {"n_repeats": s.spec.num_repeats, "img_count": len(s.records)}
                         for s in sc.subsets},
        "tag_frequency": tags,
        "trigger_words": [c.data.trigger_word] if c.data.trigger_word else [],
        "inference": {"scheduler": c.sample.scheduler, "steps": c.sample.steps,
                      "guidance": c.sample.guidance_scale, "resolution": c.data.resolution,
                      "sample_prompts": c.sample.prompts, "negative_prompt": c.sample.negative_prompt,
                      "trigger_words": [c.data.trigger_word] if c.data.trigger_word else []},
    }
