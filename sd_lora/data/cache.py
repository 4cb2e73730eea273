"""Latent and text-encoder output caches. The encoders are callables supplied by the training loop.

Latents are cached for the centre crop of each image, in both orientations when flip_aug is on, so a
cached sample is exactly what encoding its pixels would give. On disk each image gets
`<image folder>/.sd_lora_cache/<image file name>.<w>x<h>.safetensors`; its metadata key covers the image
content (SHA-256), the geometry and the encoder, so changing any of them re-encodes only that image.

Text-encoder outputs on disk are content-addressed: `<image folder>/.sd_lora_cache/text/<key>.safetensors`,
the key a SHA-256 of the caption and every setting that changes its encoding (`text_cache_key`), so runs
that share a caption, encoder and settings share the file and any change simply misses.

`choose_caches` is the one place that decides, for `"auto"`, whether a cache can be on without changing
the result; `memory_budget` is how much the in-memory caches may take before they go to disk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from sd_lora.data.dataset import ImageCaptionDataset, Item, View
from sd_lora.errors import SdLoraError
from sd_lora.fileio import give_umask_modes

__all__ = ["CACHE_DIRNAME", "CacheStats", "CacheChoice", "LatentStore", "TextStore", "cache_latents",
           "latent_cache_path", "latent_cache_bytes", "text_cache_blocker", "cache_text_outputs", "text_cache_key",
           "choose_caches", "memory_budget", "module_fingerprint", "check_cache_file"]

log = logging.getLogger("sd_lora.data")
CACHE_DIRNAME = ".sd_lora_cache"
_FORMAT_VERSION = "1"


@dataclass
class CacheStats:
    encoded: int = 0  # images (or captions) sent to the encoder
    reused: int = 0  # images (or captions) whose cache file was still valid
    to_disk: bool = False
    nbytes: int = 0  # what the cache holds in memory (0 when it streams from disk)
    rebuilt: list[str] = dataclasses.field(default_factory=list)  # "path: why" of each bad cache file re-encoded


@dataclass
class CacheChoice:
    """What `choose_caches` decided, and why (the plan prints both)."""

    latents: bool
    latents_reason: str
    text: bool
    text_reason: str


def _random_crop_where(dataset) -> str | None:
    return next((it.spec.where for it in dataset.items if it.spec.random_crop), None)


def choose_caches(cfg, dataset: ImageCaptionDataset, train_text_encoder: bool,
                  samples_seen: int | None = None) -> CacheChoice:
    """Latent / text cache on or off for `cfg.cache_latents` / `cfg.cache_text_encoder_outputs` (true, false or
    "auto"). Auto turns a cache on only when it cannot change the result (latents: no random crop; flips are
    cached in both orientations. Text: encoders frozen, captions not randomised) and, given `samples_seen`
    (the samples the run trains on), only when encoding everything once is not more work than the run does
    without it. `true` with a random crop is an error; `true` with a text blocker is reported, not an error."""
    latents, latents_reason = False, "data.cache_latents = false"
    setting = cfg.cache_latents
    crop = _random_crop_where(dataset)
    encodes = sum(2 if it.spec.flip_aug else 1 for it in dataset.items)
    if setting is True:
        if crop:
            raise SdLoraError(f"{crop}: random_crop cannot be combined with cache_latents (a cached latent fixes the "
                              "crop); turn one of them off")
        latents, latents_reason = True, "data.cache_latents = true"
    elif setting == "auto":
        if crop:
            latents_reason = f"auto: off, {crop}: random_crop picks a new crop every step"
        elif samples_seen is not None and encodes > samples_seen:
            latents_reason = (f"auto: off, the run trains on {samples_seen} samples and caching would encode "
                              f"{encodes} images first")
        else:
            latents, latents_reason = True, "auto: on, no random crop"
    text, text_reason = False, "data.cache_text_encoder_outputs = false"
    setting = cfg.cache_text_encoder_outputs
    if setting is not False:
        blocker = text_cache_blocker(dataset, train_text_encoder)
        captions = len({dataset.caption(item, None) for item in dataset.items}) if blocker is None else 0
        if blocker:
            text_reason = ("auto: off, " if setting == "auto" else "") + blocker
        elif setting == "auto" and samples_seen is not None and captions > samples_seen:
            text_reason = (f"auto: off, the run trains on {samples_seen} samples and caching would encode "
                           f"{captions} captions first")
        else:
            text = True
            text_reason = "auto: on, text encoders frozen and captions fixed" if setting == "auto" else \
                "data.cache_text_encoder_outputs = true"
    return CacheChoice(latents, latents_reason, text, text_reason)


def memory_budget(cache_memory_gb: float | None) -> int:
    """Bytes the in-memory caches may hold: `data.cache_memory_gb`, or half of the memory available now."""
    if cache_memory_gb is not None:
        return int(cache_memory_gb * 2**30)
    available = None
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    available = int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    if available is None:
        try:
            available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            available = 8 * 2**30
    return available // 2


def latent_cache_bytes(dataset: ImageCaptionDataset, channels: int, downscale: int, dtype: torch.dtype) -> int:
    """Bytes the latent cache of `dataset` takes in memory (both orientations where flip_aug is on)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    return sum((2 if it.spec.flip_aug else 1) * channels * (it.bucket[0] // downscale) * (it.bucket[1] // downscale)
               for it in dataset.items) * itemsize


def module_fingerprint(*modules: torch.nn.Module) -> str:
    """A short hash of the small tensors (norms, biases, embeddings up to 64 k values) of `modules`, with every
    tensor's name, shape and dtype: two different weight sets at the same path get different cache keys."""
    digest = hashlib.sha256()
    for module in modules:
        for name, tensor in list(module.named_parameters()) + list(module.named_buffers()):
            digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype};".encode())
            if tensor.numel() <= 1 << 16 and tensor.dtype.is_floating_point:
                digest.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


class LatentStore:
    """Item index -> latents (and flipped latents), held in memory or read from cache files on access."""

    def __init__(self, memory: dict[int, dict[str, torch.Tensor]] | None = None,
                 files: dict[int, Path] | None = None):
        self.memory, self.files = memory or {}, files or {}

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for entry in self.memory.values() for t in entry.values())

    def get(self, item_index: int, flip: bool) -> torch.Tensor:
        name = "latents_flipped" if flip else "latents"
        if item_index in self.memory:
            return self.memory[item_index][name]
        return load_file(self.files[item_index])[name]


def latent_cache_path(item: Item) -> Path:
    path = item.record.path
    return path.parent / CACHE_DIRNAME / f"{path.name}.{item.bucket[0]}x{item.bucket[1]}.safetensors"


def cache_latents(dataset: ImageCaptionDataset, encode_latents: Callable[[torch.Tensor], torch.Tensor], *,
                  to_disk: bool = False, batch_size: int = 8, encoder_id: str = "",
                  dtype: torch.dtype | None = None, latent_channels: int | None = None,
                  downscale: int | None = None) -> CacheStats:
    """Encode every image once (pixels [B, 3, H, W] in [-1, 1] -> latents [B, C, h, w]) and make `dataset`
    return `latents` instead of `pixel_values`. `encoder_id` names the VAE (e.g. model path and dtype) so a
    different VAE never reuses another's latents. The memory cache holds `dtype` (the dtype the UNet reads,
    so nothing is lost); files on disk keep the encoder's dtype and are read one sample at a time.

    A disk file with the right key is reused only when it holds what it must (`latents`, and `latents_flipped`
    with flip_aug, each [latent_channels, h / downscale, w / downscale] when those are given, floating point,
    finite, readable to the end); any other is re-encoded and listed in `CacheStats.rebuilt`."""
    random_crop = [it.spec.where for it in dataset.items if it.spec.random_crop]
    if random_crop:
        raise SdLoraError(f"{random_crop[0]}: random_crop cannot be combined with cache_latents (a cached latent "
                          "fixes the crop); turn one of them off")
    stats, memory, files = CacheStats(to_disk=to_disk), {}, {}
    pending: dict[tuple[int, int], list[tuple[int, View, str]]] = defaultdict(list)
    for index, item in enumerate(dataset.items):
        view = dataset.view(item, None)
        key = _cache_key(item, view, encoder_id) if to_disk else ""
        path = latent_cache_path(item)
        if to_disk:
            shape = (latent_channels, item.bucket[1] // downscale, item.bucket[0] // downscale) \
                if latent_channels and downscale else None
            names = ("latents", "latents_flipped") if item.spec.flip_aug else ("latents",)
            if _reusable(path, key, lambda: {name: (shape, None) for name in names}, stats):
                files[index] = path
                continue
        pending[item.bucket].append((index, view, key))
    for group in pending.values():
        for start in range(0, len(group), batch_size):
            chunk = group[start:start + batch_size]
            for (index, _, key), tensors in zip(chunk, _encode(dataset, chunk, encode_latents)):
                stats.encoded += 1
                if to_disk:
                    files[index] = _write(latent_cache_path(dataset.items[index]), tensors, key)
                else:
                    memory[index] = {k: v.to(dtype) for k, v in tensors.items()} if dtype else tensors
    dataset.latent_cache = LatentStore(memory, files)
    stats.nbytes = dataset.latent_cache.nbytes
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


class TextStore:
    """Caption -> text-encoder outputs (a dict of tensors), held in memory or read from its file on access."""

    def __init__(self, memory: dict[str, dict[str, torch.Tensor]] | None = None,
                 files: dict[str, Path] | None = None):
        self.memory, self.files = memory or {}, files or {}

    def __getitem__(self, caption: str) -> dict[str, torch.Tensor]:
        if caption in self.memory:
            return self.memory[caption]
        return load_file(self.files[caption])

    def __len__(self) -> int:
        return len(self.memory) + len(self.files)

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for entry in self.memory.values() for t in entry.values())


def text_cache_key(caption: str, settings: dict) -> str:
    """The content key of one caption's encoding: the caption and every setting that changes its encoding
    (`settings`: encoder fingerprint, family, clip skip, token length, dtype...; new options add entries)."""
    payload = json.dumps({"version": _FORMAT_VERSION, "caption": caption, **settings}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def text_cache_path(folder: Path, key: str) -> Path:
    return folder / CACHE_DIRNAME / "text" / f"{key[:40]}.safetensors"


def cache_text_outputs(dataset: ImageCaptionDataset, encode_text: Callable[[list[str]], Any],
                       batch_size: int = 32, *, to_disk: bool = False, settings: dict | None = None,
                       memory_budget: int | None = None) -> CacheStats:
    """Encode each distinct caption once; the dataset then returns `text_embeds` (a dict of tensors) per sample.

    `encode_text(captions)` may return a tensor, a dict of tensors, or a dataclass of tensors (fields that are
    None are dropped), each with the batch as first dimension. With `to_disk` (or when the cache would pass
    `memory_budget` bytes) outputs go to content-keyed files (`text_cache_key` of the caption and `settings`),
    reused by any later run with the same key, and are read one sample at a time.
    """
    dataset.text_cache = None
    settings = settings or {}
    folders: dict[str, Path] = {}
    for item in dataset.items:  # the folder of the first image with each caption holds its file
        folders.setdefault(dataset.caption(item, None), item.record.path.parent)
    captions = sorted(folders)
    stats, memory, files = CacheStats(to_disk=to_disk), {}, {}

    def encoded(chunk: list[str], count: bool = True) -> list[dict[str, torch.Tensor]]:
        with torch.no_grad():
            outputs = _as_tensor_dict(encode_text(chunk))
        stats.encoded += len(chunk) if count else 0
        return [{name: t[i].detach().cpu().clone() for name, t in outputs.items()} for i in range(len(chunk))]

    pending = captions
    if not to_disk and memory_budget is not None and captions:
        first = encoded(captions[:1])[0]
        per = sum(t.numel() * t.element_size() for t in first.values())
        if per * len(captions) > memory_budget:
            to_disk = stats.to_disk = True
        else:
            memory[captions[0]], pending = first, captions[1:]
    keys = {c: text_cache_key(c, settings) for c in pending} if to_disk else {}
    if to_disk:
        todo, template = [], {}

        def expected():  # what every entry must hold: the names, shapes and dtypes of a fresh encoding
            if not template:
                fresh = encoded(captions[:1], count=False)[0]
                template.update({k: (tuple(v.shape), v.dtype) for k, v in fresh.items()})
            return template

        for caption in pending:
            path = text_cache_path(folders[caption], keys[caption])
            if _reusable(path, keys[caption], expected, stats):
                files[caption] = path
            else:
                todo.append(caption)
        pending = todo
    for start in range(0, len(pending), batch_size):
        chunk = pending[start:start + batch_size]
        for caption, tensors in zip(chunk, encoded(chunk)):
            if to_disk:
                files[caption] = _write(text_cache_path(folders[caption], keys[caption]), tensors, keys[caption])
            else:
                memory[caption] = tensors
    dataset.text_cache = TextStore(memory, files)
    stats.nbytes = dataset.text_cache.nbytes
    return stats


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


def check_cache_file(path: Path, expected: dict[str, tuple[tuple[int, ...] | None, torch.dtype | None]]) -> str | None:
    """Why the cache file at `path` cannot be used (None when it can): it must read to the end and hold exactly
    the tensors `expected` names, each of its shape and dtype (where given), floating point and finite."""
    try:
        tensors = load_file(str(path))
    except Exception as e:  # truncated or overwritten: safetensors reports it in several exception types
        return f"unreadable ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
    if set(tensors) != set(expected):
        return f"holds {sorted(tensors)}, expected {sorted(expected)}"
    for name, (shape, dtype) in expected.items():
        t = tensors[name]
        if shape is not None and tuple(t.shape) != tuple(shape):
            return f"{name} has shape {list(t.shape)}, expected {list(shape)}"
        if not t.dtype.is_floating_point or (dtype is not None and t.dtype != dtype):
            want = str(dtype).replace("torch.", "") if dtype is not None else "floating point"
            return f"{name} is {str(t.dtype).replace('torch.', '')}, expected {want}"
        if not torch.isfinite(t).all():
            return f"{name} holds NaN or infinite values"
    return None


def _reusable(path: Path, key: str, expected: Callable[[], dict], stats: CacheStats) -> bool:
    """A cache file holding `key` and what it must (`check_cache_file`); a damaged one is noted in `stats`."""
    if not path.is_file():
        return False
    try:
        with safe_open(str(path), framework="pt") as f:
            stored = (f.metadata() or {}).get("sd_lora_cache_key")
    except Exception as e:  # a damaged header: safetensors reports it in several exception types
        stats.rebuilt.append(f"{path}: unreadable ({type(e).__name__}: {(str(e) or ' ').splitlines()[0][:120]})")
        return False
    if stored != key:  # another image, encoder or setting: a plain miss
        return False
    problem = check_cache_file(path, expected())
    if problem:
        stats.rebuilt.append(f"{path}: {problem}")
        return False
    stats.reused += 1
    return True


def _write(path: Path, tensors: dict[str, torch.Tensor], key: str) -> Path:
    """Write a cache file through a temporary name and one rename, without fsync (a cache file lost in a power
    cut is unreadable or missing next time and simply rebuilt; 20,000 fsyncs would cost minutes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.contiguous() for k, v in tensors.items()}, tmp, metadata={"sd_lora_cache_key": key})
        give_umask_modes(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
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
