"""The torch Dataset: one entry per (image, repeat); each access decodes, crops and captions one sample.

All randomness of a sample (flip, crop, caption shuffle and dropout) comes from a generator seeded by
(seed, epoch, entry index), so results never depend on worker count or on which worker loads what.
The sampler passes `(entry index, epoch)` pairs as dataset indices for that reason.
"""

from __future__ import annotations

import glob
import logging
import random
from pathlib import Path
from dataclasses import dataclass
from typing import Callable, Literal

import torch
from PIL import ImageOps

from sd_lora.config.data import DataConfig
from sd_lora.data.buckets import Size, bucket_for, make_buckets
from sd_lora.data.captions import process_caption, truncate_caption
from sd_lora.data.images import BadImage, covering_size, crop_and_resize, load_mask, load_rgb, mask_tensor, to_tensor
from sd_lora.data.layout import SubsetSpec
from sd_lora.data.scan import ImageRecord, ScanReport, SubsetScan
from sd_lora.data.validation import holdout_keys, stable_seed
from sd_lora.errors import SdLoraError

__all__ = ["Item", "View", "ImageCaptionDataset", "build_dataset", "has_validation", "collate_samples"]

log = logging.getLogger("sd_lora.data")
DEFAULT_MAX_TOKENS = 75  # CLIP's 77-token window minus the start and end tokens


@dataclass(frozen=True)
class Item:
    """One distinct image of the dataset and everything needed to turn it into a sample."""

    record: ImageRecord
    spec: SubsetSpec
    bucket: Size  # (w, h) it trains at
    loss_weight: float

    @property
    def key(self) -> str:
        return str(self.record.path)


@dataclass(frozen=True)
class View:
    """Where a sample comes from in its image: scaled to `resized`, a `target` window at (top, left), flipped?"""

    resized: Size
    top: int
    left: int
    target: Size
    flip: bool

    @property
    def crop_top_left(self) -> tuple[int, int]:
        # After a flip the window's left edge mirrors, as SDXL's crop conditioning expects.
        left = self.resized[0] - self.left - self.target[0] if self.flip else self.left
        return self.top, left


class ImageCaptionDataset(torch.utils.data.Dataset):
    def __init__(self, items: list[Item], entries: list[int], *, seed: int, train: bool,
                 count_tokens: Callable[[str], int] | None = None, max_tokens: int = DEFAULT_MAX_TOKENS):
        self.items, self.entries = items, entries
        self.seed, self.train = seed, train
        self.count_tokens, self.max_tokens = count_tokens, max_tokens
        self.latent_cache = None  # set by sd_lora.data.cache.cache_latents
        self.text_cache: dict[str, dict[str, torch.Tensor]] | None = None  # set by cache_text_outputs
        self.mask_source: str | Path | None = None  # masked loss: "alpha" or the data.mask_dir folder

    def __len__(self) -> int:
        return len(self.entries)

    def entry_buckets(self) -> list[Size]:
        return [self.items[i].bucket for i in self.entries]

    def view(self, item: Item, rng: random.Random | None) -> View:
        resized = covering_size(item.record.width, item.record.height, item.bucket)
        flip = rng is not None and item.spec.flip_aug and rng.random() < 0.5
        free_y, free_x = resized[1] - item.bucket[1], resized[0] - item.bucket[0]
        if rng is not None and item.spec.random_crop:
            top, left = rng.randint(0, free_y), rng.randint(0, free_x)
        else:
            top, left = free_y // 2, free_x // 2
        return View(resized, top, left, item.bucket, flip)

    def caption(self, item: Item, rng: random.Random | None) -> str:
        text = process_caption(item.record.caption, item.spec.caption, rng)
        if self.count_tokens is not None:
            text = truncate_caption(text, self.count_tokens, self.max_tokens)
        return text

    def pixels(self, item: Item, view: View) -> torch.Tensor:
        try:
            im = load_rgb(item.record.path, min_size=view.resized)
        except (BadImage, OSError) as e:
            raise SdLoraError(f"{item.record.path}: {e}; the file changed or is damaged beyond its header; "
                              "remove or replace it and start again") from e
        im = crop_and_resize(im, view.resized, view.top, view.left, view.target)
        return to_tensor(ImageOps.mirror(im) if view.flip else im)

    def mask(self, item: Item, view: View) -> torch.Tensor:
        """The loss mask of a sample, cropped and flipped like its pixels (read from its file also when the
        latents are cached, so cached latents keep their masks); all ones without a mask."""
        im = None
        if self.mask_source == "alpha":
            im = load_mask(item.record.path, alpha=True)
        else:
            found = sorted(Path(self.mask_source).glob(f"{glob.escape(item.record.path.stem)}.*"))
            im = load_mask(found[0], alpha=False) if found else None
        if im is None:
            return torch.ones(1, view.target[1], view.target[0])
        im = crop_and_resize(im, view.resized, view.top, view.left, view.target)
        return mask_tensor(ImageOps.mirror(im) if view.flip else im)

    def __getitem__(self, index: int | tuple[int, int]) -> dict:
        idx, epoch = index if isinstance(index, tuple) else (index, 0)
        item_index = self.entries[idx]
        item = self.items[item_index]
        rng = random.Random(f"{self.seed}:{epoch}:{idx}") if self.train else None
        view = self.view(item, rng)
        caption = self.caption(item, rng)
        sample = {
            "caption": caption, "key": item.key, "loss_weight": item.loss_weight,
            "original_size": (item.record.height, item.record.width),
            "crop_top_left": view.crop_top_left, "target_size": (view.target[1], view.target[0]),
        }
        if self.latent_cache is not None:
            sample["latents"] = self.latent_cache.get(item_index, view.flip)
        else:
            sample["pixel_values"] = self.pixels(item, view)
        if self.text_cache is not None:
            sample["text_embeds"] = self.text_cache[caption]
        if self.mask_source is not None:
            sample["mask"] = self.mask(item, view)
        if not self.train:
            sample["noise_seed"] = stable_seed("noise", self.seed, item.key)
        return sample


def has_validation(cfg: DataConfig) -> bool:
    return cfg.validation_split > 0 or bool(cfg.validation_dir)


def build_dataset(cfg: DataConfig, scan: ScanReport, split: Literal["train", "validation"] = "train",
                  seed: int = 0, count_tokens: Callable[[str], int] | None = None,
                  max_tokens: int = DEFAULT_MAX_TOKENS) -> ImageCaptionDataset:
    """The training set (repeats applied, regularisation balanced in) or the validation set (one entry per
    image, no randomisation). `count_tokens` enables truncation of over-long captions, with a warning."""
    buckets = make_buckets(cfg.resolution, cfg.min_bucket_reso, cfg.max_bucket_reso, cfg.bucket_reso_steps) \
        if cfg.enable_bucket and not cfg.bucket_no_upscale else None
    held_out = holdout_keys([str(r.path) for s in scan.subsets if not s.spec.is_reg for r in s.records],
                            cfg.validation_split, seed)

    def items_of(subsets: list[SubsetScan], keep: Callable[[SubsetSpec, ImageRecord], bool]) -> list[Item]:
        return [Item(r, s.spec, bucket_for(r.width, r.height, cfg, buckets),
                     cfg.prior_loss_weight if s.spec.is_reg else 1.0)
                for s in subsets for r in s.records if keep(s.spec, r)]

    if split == "train":
        items = items_of(scan.subsets, lambda spec, r: spec.is_reg or str(r.path) not in held_out)
        dataset = ImageCaptionDataset(items, _train_entries(items), seed=seed, train=True,
                                      count_tokens=count_tokens, max_tokens=max_tokens)
    elif split == "validation":
        if not has_validation(cfg):
            raise ValueError("no validation set configured (data.validation_split / data.validation_dir)")
        items = items_of(scan.validation, lambda spec, r: True) if scan.validation else \
            items_of(scan.subsets, lambda spec, r: str(r.path) in held_out)
        dataset = ImageCaptionDataset(items, list(range(len(items))), seed=seed, train=False,
                                      count_tokens=count_tokens, max_tokens=max_tokens)
    else:
        raise ValueError(f"split must be 'train' or 'validation', got {split!r}")
    if count_tokens is not None:
        _warn_long_captions(dataset, count_tokens, max_tokens)
    dataset.mask_source = "alpha" if cfg.alpha_mask else cfg.mask_dir
    return dataset


def _train_entries(items: list[Item]) -> list[int]:
    """Each training image num_repeats times, then regularisation images counted in exactly as kohya does, so
    a kohya dataset trains the same number of steps: whole images (each with its num_repeats) until they
    reach the training samples (the last one may overshoot), then one more sample per image, round-robin."""
    train = [i for i, it in enumerate(items) if not it.spec.is_reg for _ in range(it.spec.num_repeats)]
    reg_items = [i for i, it in enumerate(items) if it.spec.is_reg]
    reg: list[int] = []
    for i in reg_items:
        if len(reg) >= len(train):
            break
        reg += [i] * items[i].spec.num_repeats
    k = 0
    while reg_items and len(reg) < len(train):
        reg.append(reg_items[k % len(reg_items)])
        k += 1
    return train + reg


def _warn_long_captions(dataset: ImageCaptionDataset, count_tokens: Callable[[str], int], max_tokens: int) -> None:
    long = [it for it in dataset.items
            if count_tokens(process_caption(it.record.caption, it.spec.caption, None)) > max_tokens]
    if long:
        log.warning("%d caption(s) are longer than the text encoder's %d tokens and will be cut at a tag or word "
                    "boundary, e.g. %s", len(long), max_tokens, long[0].record.path.name)


def collate_samples(samples: list[dict]) -> dict:
    """List of samples -> batch dict (tensors stacked, strings listed)."""
    first = samples[0]
    batch: dict = {
        "captions": [s["caption"] for s in samples],
        "keys": [s["key"] for s in samples],
        "loss_weight": torch.tensor([s["loss_weight"] for s in samples], dtype=torch.float32),
    }
    for name in ("original_size", "crop_top_left", "target_size"):
        batch[name] = torch.tensor([s[name] for s in samples], dtype=torch.long)
    for name in ("pixel_values", "latents", "mask"):
        if name in first:
            batch[name] = torch.stack([s[name] for s in samples])
    if "text_embeds" in first:
        batch["text_embeds"] = {k: torch.stack([s["text_embeds"][k] for s in samples]) for k in first["text_embeds"]}
    if "noise_seed" in first:
        batch["noise_seed"] = torch.tensor([s["noise_seed"] for s in samples], dtype=torch.long)
    return batch
