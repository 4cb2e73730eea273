"""Generate images from requests: validation first, then batches (uniform or mixed adapters per image).

Each request names its own adapters (`loras`, and `<lora:NAME:W>` tags in the prompt). Prompts are encoded
one at a time with their own adapters active, so text-encoder adapters apply per prompt; the UNet then runs
the whole batch in one pass: with one set of adapters for all images (uniform batch) or, when images use
different single adapters, with peft's per-sample adapter routing (mixed batch, see adapters.py).
"""

from __future__ import annotations

import contextlib
import itertools
import math
import numbers
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterable, Iterator, Sequence

import numpy as np
import torch
from PIL import Image

from sd_lora.errors import SdLoraError
from sd_lora.inference.adapters import AdapterSet
from sd_lora.inference.prompts import SEED_MAX, LoraRef, check_weight, parse_prompt
from sd_lora.inference.schedulers import scheduler_name
from sd_lora.models.families import family_of_pipeline
from sd_lora.models.fp8 import compute_dtype

__all__ = ["GenerationRequest", "UsedLora", "GeneratedImage", "check_requests", "generate_images", "iter_images",
           "sweep_requests"]

_CHUNK_BATCHES = 8  # an iterator of requests is checked and batched this many batches at a time


@dataclass
class GenerationRequest:
    """One image. `clip_skip` counts like AUTOMATIC1111 (1 = last layer, 2 = penultimate); None = model default.

    `loras` are (name, weight) or LoraRef; names resolve through the AdapterSet. Tags in `prompt` add to them.
    """

    prompt: str
    negative_prompt: str = ""
    seed: int = 0
    steps: int = 20
    guidance: float = 7.0
    width: int | None = None
    height: int | None = None
    loras: Sequence[LoraRef | tuple[str, float]] = ()
    clip_skip: int | None = None
    guidance_rescale: float = 0.0  # diffusers' guidance_rescale (rescale_noise_cfg), for zero-terminal-SNR models


@dataclass(frozen=True)
class UsedLora:
    name: str  # as the user wrote it
    path: Path
    weight: float  # text encoders (and the UNet unless unet_weight is set)
    hash: str  # AUTOMATIC1111 AutoV3 short hash
    unet_weight: float | None = None

    @property
    def unet(self) -> float:
        return self.weight if self.unet_weight is None else self.unet_weight


@dataclass
class GeneratedImage:
    image: Image.Image
    array: np.ndarray  # float32 HxWx3 in [0, 1], before rounding to 8 bits
    request: GenerationRequest
    prompt: str  # without <lora:...> tags
    loras: list[UsedLora]
    sampler: str
    width: int
    height: int
    fused: dict[str, float] = field(default_factory=dict)
    zero_terminal_snr: bool = False  # the scheduler's betas were rescaled to zero terminal SNR


@dataclass
class _Job:
    request: GenerationRequest
    prompt: str
    loras: list[UsedLora]
    width: int
    height: int

    @property
    def combo(self) -> tuple[tuple[Path, float, float], ...]:
        return tuple((u.path, u.weight, u.unet) for u in self.loras)

    @property
    def shape(self) -> tuple:
        r = self.request
        return r.steps, r.guidance, self.width, self.height, r.guidance_rescale


def _refs(request: GenerationRequest, where: str) -> tuple[str, list[LoraRef]]:
    prompt, tags = parse_prompt(request.prompt)
    given = []
    for r in request.loras:
        ref = r if isinstance(r, LoraRef) else LoraRef(str(r[0]), float(r[1]))
        check_weight(ref.weight, f"{where}, LoRA {ref.name!r}")
        check_weight(ref.unet, f"{where}, LoRA {ref.name!r}")
        given.append(ref)
    return prompt, given + tags


def _used(refs: list[LoraRef], adapters: AdapterSet) -> list[UsedLora]:
    merged: dict[Path, UsedLora] = {}
    for ref, file in zip(refs, adapters.load([r.name for r in refs], [r.in_folder for r in refs])):
        old = merged.get(file)  # the same file twice adds up, as it would in AUTOMATIC1111
        te = ref.weight + (old.weight if old else 0.0)
        unet = ref.unet + (old.unet if old else 0.0)
        merged[file] = UsedLora(ref.name, file, te, adapters.hash(file), None if unet == te else unet)
    return list(merged.values())


def _text_layers(pipe) -> int | None:
    config = getattr(getattr(pipe, "text_encoder", None), "config", None)
    return getattr(config, "num_hidden_layers", None)


def _plan(pipe, requests: Iterable[GenerationRequest], adapters: AdapterSet | None, first: int = 0) -> list[_Job]:
    """Every check that can fail, for every request, before the first image is generated."""
    family = family_of_pipeline(pipe)
    default = family.native_resolution(dict(getattr(pipe, family.denoiser).config), dict(pipe.vae.config))
    layers = _text_layers(pipe)
    jobs = []
    for i, req in enumerate(requests, start=first):
        if not math.isfinite(req.guidance):
            raise SdLoraError(f"request {i + 1}: guidance {req.guidance!r} is not a finite number; use e.g. 7")
        if isinstance(req.seed, bool) or not isinstance(req.seed, numbers.Integral) or not 0 <= req.seed <= SEED_MAX:
            raise SdLoraError(f"request {i + 1}: seed {req.seed!r} is not a whole number from 0 to {SEED_MAX}")
        if req.clip_skip is not None and (req.clip_skip < 1 or (layers and req.clip_skip > layers)):
            raise SdLoraError(f"request {i + 1}: clip skip {req.clip_skip} is out of range; 1 = last layer, up to "
                              f"{layers or 'the number of'} text-encoder layers")
        prompt, refs = _refs(req, f"request {i + 1}")
        width, height = req.width or default, req.height or default
        if width % 8 or height % 8 or width <= 0 or height <= 0:
            raise SdLoraError(f"request {i + 1}: size {width}x{height} is not a multiple of 8; "
                              f"use e.g. {max(8, width // 8 * 8)}x{max(8, height // 8 * 8)}")
        if not (math.isfinite(req.guidance_rescale) and 0 <= req.guidance_rescale <= 1):
            raise SdLoraError(f"request {i + 1}: guidance rescale {req.guidance_rescale!r} must be between 0 and 1")
        if req.steps < 1:
            raise SdLoraError(f"request {i + 1}: steps must be at least 1, got {req.steps}")
        if refs and adapters is None:
            raise SdLoraError(f"request {i + 1} names LoRAs {[r.name for r in refs]} but no AdapterSet was given")
        if refs and adapters.fused:
            raise SdLoraError(f"request {i + 1} names LoRAs {[r.name for r in refs]} while adapters "
                              f"{sorted(adapters.fused)} are fused; per-prompt LoRAs need unfused adapters")
        jobs.append(_Job(req, prompt, _used(refs, adapters) if refs else [], width, height))
    return jobs


def _fits(batch: list[_Job], job: _Job, batch_size: int, adapters: AdapterSet | None) -> bool:
    if len(batch) >= batch_size or job.shape != batch[0].shape:
        return False
    combos = {j.combo for j in batch} | {job.combo}
    if len(combos) == 1:
        return True
    return all(len(c) <= 1 for c in combos) and all(adapters.supports_mixed(c[0][0]) for c in combos if c)


def _batches(jobs: list[_Job], batch_size: int, adapters: AdapterSet | None) -> list[list[_Job]]:
    batches: list[list[_Job]] = []
    for job in jobs:
        if batches and _fits(batches[-1], job, batch_size, adapters):
            batches[-1].append(job)
        else:
            batches.append([job])
    return batches


def _encode(pipe, job: _Job, cfg: bool) -> dict[str, torch.Tensor | None]:
    """Prompt and negative through the training code's encoder (clip skip, 75-token windows for long prompts:
    both get as many windows as the longer needs), as the family's pipeline takes pre-computed conditioning.
    An empty negative is zeros where the model asks for it (SDXL's force_zeros_for_empty_prompt)."""
    from sd_lora.models.encode import windows_needed

    r = job.request
    family = family_of_pipeline(pipe)
    parts = family.parts(pipe)
    denoiser = parts.denoiser
    options = family.encode_options(denoiser)
    texts = [job.prompt] + ([r.negative_prompt] if cfg else [])
    windows = max(windows_needed(tok, texts) for tok in parts.tokenizers[:2])
    encode = lambda text: family.encode_prompts(parts.text_encoders, parts.tokenizers, [text], r.clip_skip, windows,
                                                **options)
    pos = encode(job.prompt)
    neg = None
    if cfg:
        neg = encode(r.negative_prompt)
        if family.zero_negative(pipe, r.negative_prompt):
            neg.hidden_states = torch.zeros_like(pos.hidden_states)
            neg.pooled = None if pos.pooled is None else torch.zeros_like(pos.pooled)
    return family.pipeline_embeds(pos, neg, compute_dtype(denoiser))


def _unet_context(jobs: list[_Job], adapters: AdapterSet | None):
    if adapters is None or adapters.fused:
        return contextlib.nullcontext()
    combos = {j.combo for j in jobs}
    if len(combos) == 1:
        adapters.activate(list(jobs[0].combo))
        return contextlib.nullcontext()
    return adapters.mixed_forward([j.combo[0] if j.combo else None for j in jobs])


def _run_batch(pipe, jobs: list[_Job], adapters: AdapterSet | None) -> np.ndarray:
    steps, guidance, width, height, rescale = jobs[0].shape
    cfg = family_of_pipeline(pipe).uses_cfg(pipe, guidance)
    encoded = []
    for job in jobs:
        if adapters is not None and not adapters.fused:
            adapters.activate(list(job.combo))
        encoded.append(_encode(pipe, job, cfg))
    embeds = {k: None if encoded[0][k] is None else torch.cat([e[k] for e in encoded]) for k in encoded[0]}
    generators = [torch.Generator().manual_seed(int(j.request.seed)) for j in jobs]
    with torch.no_grad(), _unet_context(jobs, adapters):
        extra = {"guidance_rescale": rescale} if rescale else {}
        out = pipe(**embeds, num_inference_steps=steps, guidance_scale=guidance, width=width, height=height,
                   generator=generators, output_type="np", **extra)
    return np.asarray(out.images, dtype=np.float32)


def check_requests(pipeline, requests: Iterable[GenerationRequest], *, adapters: AdapterSet | None = None) -> None:
    """Run every check `iter_images` makes (sizes, steps, seeds, weights, LoRA files and families) without
    generating anything; adapters named by the requests are loaded into `adapters`."""
    _plan(pipeline, requests, adapters)


def _chunks(requests: Iterable[GenerationRequest], size: int) -> Iterator[list[GenerationRequest]]:
    if isinstance(requests, Sequence):
        yield list(requests)
        return
    iterator = iter(requests)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def iter_images(pipeline, requests: Iterable[GenerationRequest], *, adapters: AdapterSet | None = None,
                batch_size: int = 1, progress: bool = True) -> Iterator[GeneratedImage]:
    """Yield images in request order, batch by batch. A list of requests is checked whole (sizes, LoRA files,
    families) before the first batch runs; an iterator (e.g. a generator over a long seed range) is read
    and checked a few batches at a time, so it is never held in memory (`check_requests` can check
    representatives first). Without `adapters` the pipeline's adapters are left exactly as they are
    (the training loop samples its adapter this way)."""
    batch_size = max(1, batch_size)
    sampler = scheduler_name(pipeline)
    fused = adapters.fused if adapters is not None else {}
    done, number = 0, 0
    for chunk in _chunks(requests, batch_size * _CHUNK_BATCHES):
        jobs = _plan(pipeline, chunk, adapters, first=done)
        done += len(chunk)
        batches = _batches(jobs, batch_size, adapters)
        for batch in batches:
            number += 1
            total = f"/{len(batches)}" if isinstance(requests, Sequence) else ""
            pipeline.set_progress_bar_config(disable=not progress, desc=f"batch {number}{total}", leave=False)
            arrays = _run_batch(pipeline, batch, adapters)
            for job, array in zip(batch, arrays):
                _check_finite(array, job)
                image = Image.fromarray((array * 255).round().clip(0, 255).astype(np.uint8))
                yield GeneratedImage(image, array, job.request, job.prompt, job.loras, sampler, job.width,
                                     job.height, fused, bool(pipeline.scheduler.config.get("rescale_betas_zero_snr")))


def _check_finite(array: np.ndarray, job: _Job) -> None:
    """A NaN image would be saved black and look like a result: it is an error naming the request instead."""
    if not np.isfinite(array).all():
        r = job.request
        loras = ", ".join(f"{u.name}:{u.weight:g}" for u in job.loras) if job.loras else "none"
        raise SdLoraError(
            f"the image for prompt {job.prompt[:60]!r} (seed {r.seed}, LoRAs: {loras}) came out as NaN (it would "
            "be saved black); nothing was written for it. Usual causes: a LoRA weight far above 1, an adapter or "
            "model holding NaN or overflowing values (check it with `sd-lora inspect`), or fp16 overflow (try "
            "--dtype fp32 or bf16)")


def generate_images(pipeline, requests: Iterable[GenerationRequest], *, adapters: AdapterSet | None = None,
                    batch_size: int = 1, progress: bool = True) -> list[GeneratedImage]:
    """All images for `requests`, in order (see `iter_images`)."""
    return list(iter_images(pipeline, requests, adapters=adapters, batch_size=batch_size, progress=progress))


def sweep_requests(request: GenerationRequest, names: Sequence[str],
                   scales: Sequence[float]) -> list[GenerationRequest]:
    """Adapters × scales, row by row, all with the request's seed; the request's own LoRAs are replaced."""
    return [replace(request, loras=[LoraRef(name, float(s))]) for name in names for s in scales]
