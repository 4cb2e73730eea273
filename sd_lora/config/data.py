"""The `[data]` section and its `[[data.subsets]]` tables (names follow kohya sd-scripts).

A subset field left unset (None) inherits the value of the same key in `[data]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from sd_lora.config.fields import finite_first
from sd_lora.config.fields import option as _f

__all__ = ["DataConfig", "SubsetConfig", "SUBSET_INHERITED"]

# Keys a subset may set for itself; unset ones fall back to `[data]`.
SUBSET_INHERITED = ("caption_extension", "class_tokens", "keep_tokens", "keep_tokens_separator", "shuffle_caption",
                    "caption_dropout_rate", "caption_tag_dropout_rate", "flip_aug", "random_crop")


@dataclass
class SubsetConfig:
    dir: str = _f("", "Folder of images (and same-stem caption files) of this subset.", path=True)
    num_repeats: int = _f(1, "How many times each image is seen per epoch.")
    is_reg: bool = _f(False, "A regularisation (prior-preservation) set: its loss is weighted by "
                             "data.prior_loss_weight.")
    metadata_file: str | None = _f(
        None, "HF imagefolder metadata (JSON lines with file_name + text); default: dir/metadata.jsonl if present.",
        path=True)
    class_prompt: str | None = _f(None, "Regularisation subsets: prompt for generating missing class images "
                                        "(default: data.class_prompt, else class_tokens).")
    num_class_images: int | None = _f(None, "Regularisation subsets: generate images until the folder holds this many "
                                            "(default: data.num_class_images).")
    caption_extension: str | None = _f(None, "Caption file extension (default: data.caption_extension).")
    class_tokens: str | None = _f(None, "Caption used when an image has no caption file or metadata entry.")
    keep_tokens: int | None = _f(None, "Leading comma-separated tags that shuffling and tag dropout never touch.")
    keep_tokens_separator: str | None = _f(None, "If a caption contains it, the part before it is kept in place.")
    shuffle_caption: bool | None = _f(None, "Shuffle the comma-separated tags of each caption every time it is used.")
    caption_dropout_rate: float | None = _f(None, "Probability of training on an empty caption.")
    caption_tag_dropout_rate: float | None = _f(None, "Probability of dropping each (non-kept) tag.")
    flip_aug: bool | None = _f(None, "Randomly flip images horizontally.")
    random_crop: bool | None = _f(None, "Random instead of center crop to the target size.")

    def check(self, where: str) -> list[str]:
        """Problems of this subset, each prefixed with `where` (e.g. 'data.subsets[1]')."""
        problems = []
        if not self.dir.strip():
            problems.append(f"{where}.dir: must name the folder of images of this subset")
        if self.num_repeats < 1:
            problems.append(f"{where}.num_repeats: must be at least 1, got {self.num_repeats}")
        if self.num_class_images is not None and self.num_class_images < 0:
            problems.append(f"{where}.num_class_images: must not be negative, got {self.num_class_images}")
        if self.num_class_images and not self.is_reg:
            problems.append(f"{where}.num_class_images: only applies to a regularisation subset; set is_reg = true")
        problems += _check_caption_keys(self, where)
        return finite_first(self, where, problems)


def _check_caption_keys(cfg, where: str) -> list[str]:
    problems = []
    for name in ("caption_dropout_rate", "caption_tag_dropout_rate"):
        value = getattr(cfg, name)
        if value is not None and not 0.0 <= value <= 1.0:
            problems.append(f"{where}.{name}: must be between 0 and 1, got {value}")
    if cfg.keep_tokens is not None and cfg.keep_tokens < 0:
        problems.append(f"{where}.keep_tokens: must not be negative, got {cfg.keep_tokens}")
    ext = cfg.caption_extension
    if ext is not None and not (ext.startswith(".") and len(ext) > 1):
        problems.append(f"{where}.caption_extension: must start with a dot, e.g. '.txt', got {ext!r}")
    if cfg.random_crop and getattr(cfg, "cache_latents", False) is True:
        problems.append(f"{where}.random_crop: a cached latent fixes the crop, so random_crop cannot be combined "
                        "with cache_latents; turn one of them off")
    return problems


@dataclass
class DataConfig:
    dir: str = _f("", "Folder of images with same-stem caption files, or of kohya repeat folders "
                      "like '10_mychar/' (10 repeats, class tokens 'mychar').", path=True)
    config: str | None = _f(None, "A kohya sd-scripts dataset_config TOML ([general] / [[datasets]] / "
                                  "[[datasets.subsets]]); its keys replace data.dir / subsets here "
                                  "(docs/kohya.md lists how each key maps).", path=True)
    resolution: int = _f(512, "Training size: images are resized on the short side and cropped to it "
                              "(with buckets: the pixel budget is resolution²). When not given: the model's native "
                              "size, read from its config files (builtin:tiny 32, SDXL 1024); 512 when unknown.")
    caption_extension: str = _f(".txt", "Extension of the caption file beside each image.")
    metadata_file: str | None = _f(
        None, "HF imagefolder metadata (JSON lines with file_name + text); default: dir/metadata.jsonl if present.",
        path=True)
    num_repeats: int = _f(1, "Repeats of the images directly inside data.dir (repeat folders carry their own).")
    subsets: list[SubsetConfig] = _f([], "More image folders, each with its own repeats and caption settings.")
    trigger_word: str | None = _f(None, "Word put in front of every training caption (e.g. 'sks').")
    class_tokens: str | None = _f(None, "Caption used when an image has no caption file or metadata entry.")
    keep_tokens: int = _f(0, "Leading comma-separated tags that shuffling and tag dropout never touch.")
    keep_tokens_separator: str = _f("", "If a caption contains it, the part before it is kept in place "
                                        "(e.g. '|||'); empty: off.")
    shuffle_caption: bool = _f(False, "Shuffle the comma-separated tags of each caption every time it is used.")
    caption_dropout_rate: float = _f(0.0, "Probability of training on an empty caption.")
    caption_tag_dropout_rate: float = _f(0.0, "Probability of dropping each (non-kept) tag.")
    flip_aug: bool = _f(False, "Randomly flip images horizontally.")
    random_crop: bool = _f(False, "Random instead of center crop to the target size.")
    enable_bucket: bool = _f(False, "Aspect-ratio buckets: each image trains at the bucket closest to its shape.")
    min_bucket_reso: int = _f(256, "Smallest bucket side in pixels.")
    max_bucket_reso: int = _f(1024, "Largest bucket side in pixels.")
    bucket_reso_steps: int = _f(64, "Bucket sides are multiples of this many pixels.")
    bucket_no_upscale: bool = _f(False, "Buckets never exceed an image's own size (small images are not enlarged).")
    cache_latents: bool | Literal["auto"] = _f(
        "auto", "Encode every image with the VAE once before training and keep the latents. 'auto': on unless a "
        "subset uses random_crop (flips are cached in both orientations) or the run is shorter than one pass of "
        "encoding; the plan says what it chose and why.")
    cache_latents_to_disk: bool = _f(False, "Also store cached latents as safetensors beside the images and reuse "
                                             "them in later runs.")
    cache_text_encoder_outputs: bool | Literal["auto"] = _f(
        "auto", "Encode each caption once. Only when the text encoders are frozen and captions are not shuffled or "
        "dropped (otherwise the plan says why not); 'auto' also skips it for a run shorter than one pass.")
    cache_text_encoder_outputs_to_disk: bool = _f(
        False, "Store cached text-encoder outputs as safetensors in each image folder's .sd_lora_cache/text/, keyed "
        "by caption, encoder weights, clip skip and token length, and reuse them in later runs.")
    cache_memory_gb: float | None = _f(
        None, "Most memory (GiB) the in-memory caches may take; past it latents, then text outputs, go to the disk "
              "cache and stream from it. Default: half of the memory available at start.")
    t5_max_length: int | None = _f(None, "SD3 and FLUX.1: T5 tokens per caption (default 256 for SD3, 512 for FLUX.1, "
                                              "as diffusers; up to 512).")
    max_token_length: int | None = _f(None, "Caption tokens per image: 75, 150 or 225. Longer captions are split into "
                                            "75-token windows, each encoded with BOS/EOS, and concatenated (as "
                                            "AUTOMATIC1111 and kohya do); default: one window (cut at 75).")
    alpha_mask: bool = _f(False, "Masked loss from each image's alpha channel: transparent pixels do not count "
                                 "(opaque 1, transparent 0; images without alpha count fully).")
    mask_dir: str | None = _f(None, "Masked loss from same-stem grayscale masks in this folder (white counts, black "
                                    "does not); an image without a mask counts fully.", path=True)
    reg_data_dir: str | None = _f(None, "Folder of regularisation (class) images; shorthand for a subset with "
                                        "is_reg = true.", path=True)
    prior_loss_weight: float = _f(1.0, "Loss weight of regularisation images.")
    num_class_images: int = _f(0, "Generate class images into the regularisation folder until it holds this many.")
    class_prompt: str | None = _f(None, "Prompt for generating class images (e.g. 'a photo of a dog').")
    class_image_steps: int = _f(30, "Denoising steps per generated class image.")
    class_image_scheduler: str | None = _f(None, "Sampler of the generated class images (as in sd-lora generate); "
                                                 "default: the model's own scheduler.")
    validation_split: float = _f(0.0, "Fraction of training images held out for a validation loss "
                                      "(chosen by the seed).")
    validation_dir: str | None = _f(None, "Folder of validation images with captions (instead of validation_split).",
                                    path=True)
    validation_every_n_steps: int = _f(0, "Compute the validation loss every N optimiser steps (0: at the end only).")
    num_workers: int = _f(0, "Data-loading worker processes (0: load in the training process). "
                             "Results do not depend on it.")
    pin_memory: bool | Literal["auto"] = _f("auto", "Page-locked batches for faster host-to-GPU copies ('auto': on when "
                                                    "training on CUDA).")
    prefetch_factor: int | None = _f(None, "Batches each data-loading worker prepares ahead (needs num_workers > 0; "
                                           "default: torch's 2).")

    def validate(self) -> list[str]:
        problems = self._check_sizes() + _check_caption_keys(self, "data")
        for i, subset in enumerate(self.subsets):
            problems += subset.check(f"data.subsets[{i}]")
            if subset.random_crop and self.cache_latents is True:
                problems.append(f"data.subsets[{i}].random_crop: a cached latent fixes the crop, so random_crop "
                                "cannot be combined with data.cache_latents; turn one of them off")
        if not 0.0 <= self.validation_split < 1.0:
            problems.append(f"data.validation_split: must be in [0, 1), got {self.validation_split}")
        if self.validation_split > 0 and self.validation_dir:
            problems.append("data.validation_split: set either validation_split or validation_dir, not both")
        if self.prior_loss_weight < 0:
            problems.append(f"data.prior_loss_weight: must not be negative, got {self.prior_loss_weight}")
        for name in ("num_class_images", "num_workers", "validation_every_n_steps", "num_repeats"):
            minimum = 1 if name == "num_repeats" else 0
            if getattr(self, name) < minimum:
                problems.append(f"data.{name}: must be at least {minimum}, got {getattr(self, name)}")
        if self.prefetch_factor is not None and (self.prefetch_factor < 1 or self.num_workers == 0):
            problems.append(f"data.prefetch_factor: needs num_workers > 0 and a value of at least 1, got "
                            f"{self.prefetch_factor} with num_workers = {self.num_workers}")
        if self.t5_max_length is not None and not 1 <= self.t5_max_length <= 512:
            problems.append(f"data.t5_max_length: must be 1 to 512 tokens, got {self.t5_max_length}")
        if self.max_token_length is not None and self.max_token_length not in (75, 150, 225):
            problems.append(f"data.max_token_length: must be 75, 150 or 225, got {self.max_token_length}")
        if self.alpha_mask and self.mask_dir:
            problems.append("data.alpha_mask: set either alpha_mask or mask_dir, not both")
        if self.class_image_steps < 1:
            problems.append(f"data.class_image_steps: must be at least 1, got {self.class_image_steps}")
        if self.class_image_scheduler is not None:
            from sd_lora.config.train import _check_scheduler

            problems += [p.replace("sample.scheduler", "data.class_image_scheduler")
                         for p in _check_scheduler(self.class_image_scheduler)]
        if self.cache_latents_to_disk and self.cache_latents is False:
            problems.append("data.cache_latents_to_disk: needs cache_latents = true or 'auto'")
        if self.cache_text_encoder_outputs_to_disk and self.cache_text_encoder_outputs is False:
            problems.append("data.cache_text_encoder_outputs_to_disk: needs cache_text_encoder_outputs = true or 'auto'")
        if self.cache_memory_gb is not None and self.cache_memory_gb < 0:
            problems.append(f"data.cache_memory_gb: must not be negative, got {self.cache_memory_gb}")
        return finite_first(self, "data", problems)

    def _check_sizes(self) -> list[str]:
        problems = []
        if self.resolution < 8 or self.resolution % 8:
            problems.append(f"data.resolution: must be a positive multiple of 8, got {self.resolution}")
        if not self.enable_bucket:
            if self.bucket_no_upscale:
                problems.append("data.bucket_no_upscale: only applies with enable_bucket = true")
            return problems
        step = self.bucket_reso_steps
        if step < 8 or step % 8:
            problems.append(f"data.bucket_reso_steps: must be a positive multiple of 8, got {step}")
            return problems
        for name in ("min_bucket_reso", "max_bucket_reso"):
            value = getattr(self, name)
            if value < step or value % step:
                problems.append(f"data.{name}: must be a positive multiple of bucket_reso_steps ({step}), got {value}")
        if not self.min_bucket_reso <= self.resolution <= self.max_bucket_reso:
            problems.append(f"data.resolution: must lie between min_bucket_reso ({self.min_bucket_reso}) and "
                            f"max_bucket_reso ({self.max_bucket_reso}), got {self.resolution}")
        return problems
