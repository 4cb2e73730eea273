"""The `ss_*` keys kohya sd-scripts writes that sd-lora's own facts do not cover, with kohya's values for what
sd-lora does not do (no colour augmentation: "False"; unset options: "None"), so tools that read kohya
metadata (AUTOMATIC1111's info panel, Civitai-style readers, kohya's own scripts) see a kohya-like file.

Checked against a file written by kohya's train_network.py itself (tests/formats/data/kohya/).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from functools import lru_cache
from pathlib import Path

__all__ = ["kohya_fields", "OPTIMIZER_CLASSES", "kohya_model_name"]

# kohya records the optimiser's class path (Civitai shows it)
OPTIMIZER_CLASSES = {"adamw": "torch.optim.adamw.AdamW", "adamw8bit": "bitsandbytes.optim.adamw.AdamW8bit",
                     "prodigy": "prodigyopt.prodigy.Prodigy", "adafactor": "transformers.optimization.Adafactor",
                     "lion": "lion_pytorch.lion_pytorch.Lion",
                     "adamw_schedulefree": "schedulefree.adamw_schedulefree.AdamWScheduleFree",
                     "came": "came_pytorch.CAME.CAME"}


def kohya_model_name(location: str, name: str) -> str:
    """kohya's ss_sd_model_name: the base model's file or folder name (never the local path), else its id."""
    return Path(location).name if location and Path(location).exists() else name


@lru_cache(maxsize=4)
def _model_hashes(location: str) -> tuple[str | None, str | None]:
    """(ss_sd_model_hash, ss_new_sd_model_hash) of a single-file base model as kohya computes them: the old
    AUTOMATIC1111 hash (SHA-256 of 64 KiB at 1 MiB, 8 digits) and the full SHA-256; None for folders/hub ids."""
    import hashlib

    path = Path(location) if location else None
    if path is None or not path.is_file():
        return None, None
    full = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(0x100000)
        legacy = hashlib.sha256(f.read(0x10000)).hexdigest()[:8]
        f.seek(0)
        for block in iter(lambda: f.read(1 << 20), b""):
            full.update(block)
    return legacy, full.hexdigest()


def _bucket_info(d, dataset) -> dict | None:
    if not d.enable_bucket or dataset is None:
        return None
    counts = Counter(dataset.entry_buckets())
    errors = [abs(it.record.width / it.record.height - it.bucket[0] / it.bucket[1]) for it in dataset.items]
    return {"buckets": {str(i): {"resolution": list(b), "count": n} for i, (b, n) in enumerate(sorted(counts.items()))},
            "mean_img_ar_error": sum(errors) / len(errors) if errors else 0.0}


def _float(x) -> float | None:
    return None if x is None else float(x)  # "5.0", as kohya's argparse floats print, for an int in the config


def kohya_fields(cfg, scan, run) -> dict[str, object]:
    """ss_* key -> value (None, bools and numbers as kohya writes them; see community_metadata). `run`: the
    run's `sd_lora.train.facts.RunFacts`. The only source of these keys: training_facts does not repeat them."""
    t, n, d = cfg.train, cfg.network, cfg.data
    legacy, full = _model_hashes(run.base_model_location)
    reg_dirs = {s.spec.dir.name: {"n_repeats": s.spec.num_repeats, "img_count": len(s.records)}
                for s in scan.subsets if s.spec.is_reg}
    import sd_lora

    return {
        "modelspec.implementation_version": f"sd-lora/{sd_lora.__version__}",
        "ss_sd_model_hash": legacy, "ss_new_sd_model_hash": full,
        "ss_num_batches_per_epoch": run.batches_per_epoch,
        "ss_total_batch_size": t.batch_size * t.gradient_accumulation_steps * run.num_processes,
        "ss_bucket_info": json.dumps(_bucket_info(d, run.dataset)), "ss_enable_bucket": d.enable_bucket,
        "ss_min_bucket_reso": d.min_bucket_reso if d.enable_bucket else None,
        "ss_max_bucket_reso": d.max_bucket_reso if d.enable_bucket else None,
        "ss_bucket_no_upscale": d.bucket_no_upscale,
        "ss_cache_latents": run.latents_cached,
        "ss_caption_dropout_rate": _float(d.caption_dropout_rate), "ss_caption_dropout_every_n_epochs": 0,
        "ss_caption_tag_dropout_rate": d.caption_tag_dropout_rate, "ss_keep_tokens": d.keep_tokens,
        "ss_shuffle_caption": d.shuffle_caption, "ss_flip_aug": d.flip_aug, "ss_random_crop": d.random_crop,
        "ss_color_aug": False, "ss_face_crop_aug_range": None, "ss_prior_loss_weight": d.prior_loss_weight,
        "ss_reg_dataset_dirs": reg_dirs, "ss_clip_skip": t.clip_skip, "ss_max_token_length": d.max_token_length,
        "ss_max_grad_norm": t.max_grad_norm, "ss_min_snr_gamma": _float(t.min_snr_gamma),
        "ss_noise_offset": _float(t.noise_offset or None), "ss_noise_offset_random_strength": False,
        "ss_adaptive_noise_scale": None, "ss_multires_noise_iterations": t.multires_noise_iterations or None,
        "ss_multires_noise_discount": _float(t.multires_noise_discount),
        "ss_ip_noise_gamma": _float(t.ip_noise_gamma or None),
        "ss_ip_noise_gamma_random_strength": False, "ss_debiased_estimation": t.debiased_estimation_loss,
        "ss_huber_c": _float(t.huber_c), "ss_huber_scale": 1.0, "ss_huber_schedule": t.huber_schedule,
        "ss_zero_terminal_snr": t.zero_terminal_snr, "ss_network_dropout": _float(n.dropout or None),
        "ss_scale_weight_norms": None, "ss_text_encoder_lr": _float(t.text_encoder_lr or t.learning_rate)
        if n.train_text_encoder else None, "ss_training_comment": None, "ss_lowram": False,
        "ss_full_fp16": False, "ss_fp8_base": False, "ss_fp8_base_unet": False, "ss_resize_interpolation": None,
        "ss_validation_split": d.validation_split, "ss_validation_seed": None,
        "ss_validate_every_n_steps": d.validation_every_n_steps or None, "ss_validate_every_n_epochs": None,
        "ss_max_validation_steps": None, "ss_num_validation_images": run.validation_images,
        "ss_epoch": math.ceil(run.global_step / run.steps_per_epoch) if run.steps_per_epoch else run.epoch,
    }
