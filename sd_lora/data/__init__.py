"""Dataset pipeline: folders of images + captions -> bucketed, cached, seeded batches (no model code).

Training-loop order::

    scan = scan_dataset(cfg.data)                      # cheap; SdLoraError on a missing or empty dataset
    print(format_plan(make_plan(cfg.data, scan, batch_size=..., max_steps=...)))
    # ... load models ...
    scan = prepare_class_images(cfg.data, scan, generate, seed=seed)   # only if class_images_needed(scan)
    train_ds = build_dataset(cfg.data, scan, split="train", seed=seed)
    cache_latents(train_ds, encode_latents, to_disk=...)                # if cfg.data.cache_latents
    loader = build_dataloader(train_ds, batch_size=..., seed=seed, num_workers=cfg.data.num_workers)
"""

from sd_lora.data.cache import cache_latents, cache_text_outputs, text_cache_blocker
from sd_lora.data.dataset import ImageCaptionDataset, build_dataset, collate_samples, has_validation
from sd_lora.data.loader import BucketBatchSampler, build_dataloader, loader_options
from sd_lora.data.plan import TrainingPlan, format_plan, make_plan
from sd_lora.data.prior import class_images_needed, prepare_class_images
from sd_lora.data.scan import ScanReport, scan_dataset
from sd_lora.data.validation import validation_noise

__all__ = ["scan_dataset", "ScanReport", "build_dataset", "build_dataloader", "loader_options", "has_validation",
           "ImageCaptionDataset", "BucketBatchSampler", "collate_samples",
           "cache_latents", "cache_text_outputs", "text_cache_blocker",
           "make_plan", "format_plan", "TrainingPlan",
           "class_images_needed", "prepare_class_images", "validation_noise"]
