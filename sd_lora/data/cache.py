"""Latent and text-encoder output caches. The encoders are callables supplied by the training loop.

Latents are cached for the centre crop of each image, in both orientations when flip_aug is on, so a
cached sample is exactly what encoding its pixels would give. On disk each image gets
`<image folder>/.sd_lora_cache/<image file name>.<w>x<h>.safetensors`; its metadata key covers the image
content (SHA-256), the geometry and the encoder, so changing any of them re-encodes only that image.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sd_lora.data.dataset import ImageCaptionDataset, Item, View
from sd_lora.errors import SdLoraError
from sd_lora.fileio import atomic_path

__all__ = ["CACHE_DIRNAME", "CacheStats", "LatentStore", "cache_latents", "latent_cache_path",
           "text_cache_blocker", "cache_text_outputs"]

log = logging.getLogger("sd_lora.data")
CACHE_DIRNAME = ".sd_lora_cache"
_FORMAT_VERSION = "1"


@dataclass
class CacheStats:
    encoded: int = 0  # images sent to the encoder
    reused: int = 0  # images whose cache file was still valid


class LatentStore:
    """Item index -> latents (and flipped latents), held in memory or read from cache files on access."""

    def __init__(self, memory: dict[int, dict[str, torch.Tensor]] | None = None,
                 files: dict[int, Path] | None = None):
        self.memory, self.files = memory or {}, files or {}

    def get(self, item_index: int, flip: bool) -> torch.Tensor:
        name = "latents_flipped" if flip else "latents"
        if item_index in self.memory:
            return self.memory[item_index][name]
        return load_file(self.files[item_index])[name]


def latent_cache_path(item: Item) -> Path:
    path = item.record.path
    return path.parent / CACHE_DIRNAME / f"{path.name}.{item.bucket[0]}x{item.bucket[1]}.safetensors"


def cache_latents(dataset: ImageCaptionDataset, encode_latents: Callable[[torch.Tensor], torch.Tensor], *,
                  to_disk: bool = False, batch_size: int = 8, encoder_id: str = "") -> CacheStats:
    """Encode every image once (pixels [B, 3, H, W] in [-1, 1] -> latents [B, C, h, w]) and make `dataset`
    return `latents` instead of `pixel_values`. `encoder_id` names the VAE (e.g. model path and dtype) so a
    different VAE never reuses another's latents."""
    random_crop = [it.spec.where for it in dataset.items if it.spec.random_crop]
    if random_crop:
        raise SdLoraError(f"{random_crop[0]}: random_crop cannot be combined with cache_latents (a cached latent "
                          "fixes the crop); turn one of them off")
    stats, memory, files = CacheStats(), {}, {}
    pending: dict[tuple[int, int], list[tuple[int, View, str]]] = defaultdict(list)
    for index, item in enumerate(dataset.items):
        view = dataset.view(item, None)
        key = _cache_key(item, view, encoder_id) if to_disk else ""
        if to_disk and _stored_key(latent_cache_path(item)) == key:
            files[index] = latent_cache_path(item)
            stats.reused += 1
        else:
            pending[item.bucket].append((index, view, key))
    for group in pending.values():
        for start in range(0, len(group), batch_size):
            chunk = group[start:start + batch_size]
            for (index, _, key), tensors in zip(chunk, _encode(dataset, chunk, encode_latents)):
                stats.encoded += 1
                if to_disk:
                    files[index] = _write(latent_cache_path(dataset.items[index]), tensors, key)
                else:
                    memory[index] = tensors
    dataset.latent_cache = LatentStore(memory, files)
    log.info("latent cache: %d image(s) encoded, %d reused from disk", stats.encoded, stats.reused)
    return stats


def text_cache_blocker(dataset: ImageCaptionDataset, train_text_encoder: bool) -> str | None:
    """Why text-encoder outputs cannot be cached for `dataset`, or None when they can."""
    if train_text_encoder:
        return "the text encoder is being trained (network.train_text_encoder), so its outputs change every step"
    for item in dataset.items:
        settings = item.spec.caption
        if dataset.train and settings.randomised:
            which = [name for name, on in (("shuffle_caption", settings.shuffle_caption),
                                           ("caption_dropout_rate", settings.caption_dropout_rate > 0),
                                           ("caption_tag_dropout_rate", settings.caption_tag_dropout_rate > 0)) if on]
            return f"{item.spec.where}: captions change between uses ({', '.join(which)}), so each must be re-encoded"
    return None


def cache_text_outputs(dataset: ImageCaptionDataset, encode_text: Callable[[list[str]], Any],
                       batch_size: int = 32) -> int:
    """Encode each distinct caption once; the dataset then returns `text_embeds` (a dict of tensors) per sample.

    `encode_text(captions)` may return a tensor, a dict of tensors, or a dataclass of tensors (fields that are
    None are dropped), each with the batch as first dimension. Returns the number of captions encoded.
    """
    dataset.text_cache = None
    captions = sorted({dataset.caption(item, None) for item in dataset.items})
    cache: dict[str, dict[str, torch.Tensor]] = {}
    for start in range(0, len(captions), batch_size):
        chunk = captions[start:start + batch_size]
        with torch.no_grad():
            outputs = _as_tensor_dict(encode_text(chunk))
        for i, caption in enumerate(chunk):
            cache[caption] = {name: t[i].detach().cpu().clone() for name, t in outputs.items()}
    dataset.text_cache = cache
    return len(captions)


def _encode(dataset: ImageCaptionDataset, chunk: list[tuple[int, View, str]],
            encode_latents: Callable[[torch.Tensor], torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    pixels = torch.stack([dataset.pixels(dataset.items[index], view) for index, view, _ in chunk])
    flip = [dataset.items[index].spec.flip_aug for index, _, _ in chunk]
    batch = torch.cat([pixels, pixels[torch.tensor(flip)].flip(-1)]) if any(flip) else pixels
    with torch.no_grad():
        latents = encode_latents(batch).detach().cpu()
    flipped = iter(latents[len(chunk):])
    out = []
    for i, wants_flip in enumerate(flip):
        entry = {"latents": latents[i].clone()}
        if wants_flip:
            entry["latents_flipped"] = next(flipped).clone()
        out.append(entry)
    return out


def _cache_key(item: Item, view: View, encoder_id: str) -> str:
    digest = hashlib.sha256()
    with open(item.record.path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    geometry = dict(version=_FORMAT_VERSION, resized=view.resized, top=view.top, left=view.left,
                    target=view.target, flip=item.spec.flip_aug, encoder=encoder_id)
    return digest.hexdigest() + ":" + hashlib.sha256(json.dumps(geometry, sort_keys=True).encode()).hexdigest()


def _stored_key(path: Path) -> str | None:
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            return (f.metadata() or {}).get("sd_lora_cache_key")
    except Exception:  # an unreadable cache file is simply rebuilt
        return None


def _write(path: Path, tensors: dict[str, torch.Tensor], key: str) -> Path:
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata={"sd_lora_cache_key": key})
    return path


def _as_tensor_dict(output: Any) -> dict[str, torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return {"hidden_states": output}
    if isinstance(output, dict):
        return {k: v for k, v in output.items() if isinstance(v, torch.Tensor)}
    if dataclasses.is_dataclass(output):
        return {f.name: getattr(output, f.name) for f in dataclasses.fields(output)
                if isinstance(getattr(output, f.name), torch.Tensor)}
    raise TypeError(f"encode_text returned {type(output).__name__}; expected a tensor, dict or dataclass of tensors")
