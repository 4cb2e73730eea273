"""Dataset pipeline: folders of images + captions -> bucketed, cached, seeded batches (no model code).

Training-loop entry points::

    scan = scan_dataset(cfg.data)                      # cheap; SdLoraError on a missing or empty dataset
    train_ds = build_dataset(cfg.data, scan, split="train", seed=seed)
    loader = build_dataloader(train_ds, batch_size=..., seed=seed, num_workers=cfg.data.num_workers)
"""

from sd_lora.data.dataset import ImageCaptionDataset, build_dataset, collate_samples, has_validation
from sd_lora.data.loader import BucketBatchSampler, build_dataloader
from sd_lora.data.scan import ScanReport, scan_dataset

__all__ = ["scan_dataset", "ScanReport", "build_dataset", "build_dataloader", "has_validation",
           "ImageCaptionDataset", "BucketBatchSampler", "collate_samples"]
