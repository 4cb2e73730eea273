"""The training run's data-side helpers: latent and text-encoder caches (computed once before the first step)
and the validation loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from sd_lora.models.encode import encode_latents

__all__ = ["CacheResult", "setup_caches", "text_cache_settings", "latent_shape", "validation_loss"]


@dataclass
class CacheResult:
    choice: object  # sd_lora.data.cache.CacheChoice: what was cached and why
    latents: bool = False
    texts: bool = False
    text_settings: dict | None = None  # the text disk cache's key (kept for the record)


def setup_caches(dataset, *, data, train, train_text_encoder: bool, num_processes: int, device, vae,
                 latent_dtype: torch.dtype, model_id: str, encode_text, text_settings: dict, autocast) -> CacheResult:
    """Latents and text-encoder outputs computed once, when `choose_caches` says so (the plan printed the same
    decision), held in memory in `latent_dtype` (what the denoiser reads), or on disk past the memory budget.
    `encode_text(captions)` encodes exactly as the uncached step does (under `autocast()`); `text_settings`
    is everything besides the caption that changes its output (`text_cache_settings`)."""
    from sd_lora.data.cache import (cache_latents, cache_text_outputs, choose_caches, latent_cache_bytes,
                                    memory_budget, module_fingerprint)
    from sd_lora.data.plan import samples_seen

    d, t = data, train
    seen = samples_seen(len(dataset), t.batch_size, t.gradient_accumulation_steps, num_processes,
                        t.max_steps, t.max_epochs)
    choice = choose_caches(d, dataset, train_text_encoder, seen)
    budget = memory_budget(d.cache_memory_gb)
    result = CacheResult(choice)
    if choice.latents:
        dtype = latent_dtype if latent_dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.float32
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        size = latent_cache_bytes(dataset, vae.config.latent_channels, factor, dtype)
        to_disk = d.cache_latents_to_disk or size > budget
        encoder_id = f"{model_id}:{vae.dtype}:{module_fingerprint(vae)}"
        stats = cache_latents(dataset, lambda px: encode_latents(vae, px.to(device)), to_disk=to_disk,
                              encoder_id=encoder_id, dtype=dtype, latent_channels=vae.config.latent_channels,
                              downscale=factor)
        _note_rebuilt("latent", stats.rebuilt)
        budget -= stats.nbytes
        where = "streamed from disk" + ("" if d.cache_latents_to_disk else
                                        f" ({size / 2**30:.2f} GiB > budget {(budget + stats.nbytes) / 2**30:.2f} GiB)") \
            if to_disk else f"in memory, {stats.nbytes / 2**20:.1f} MiB {str(dtype).replace('torch.', '')}"
        print(f"latent cache: {stats.encoded} image(s) encoded, {stats.reused} reused from the disk cache; {where}")
        result.latents = True
    elif d.cache_latents == "auto":
        print(f"latent cache: off ({choice.latents_reason})")
    if choice.text:
        result.text_settings = text_settings
        with torch.no_grad(), autocast():  # exactly as the uncached step encodes
            stats = cache_text_outputs(dataset, encode_text, to_disk=d.cache_text_encoder_outputs_to_disk,
                                       settings=text_settings, memory_budget=max(budget, 0))
        _note_rebuilt("text-encoder output", stats.rebuilt)
        where = "streamed from disk" if stats.to_disk else f"in memory, {stats.nbytes / 2**20:.1f} MiB"
        print(f"text-encoder outputs cached for {stats.encoded + stats.reused} distinct captions "
              f"({stats.encoded} encoded, {stats.reused} reused from the disk cache; {where})")
        result.texts = True
    elif d.cache_text_encoder_outputs is not False:
        print(f"text-encoder outputs are not cached: {choice.text_reason}")
    return result


def _note_rebuilt(what: str, rebuilt: list[str]) -> None:
    if rebuilt:
        print(f"note: re-encoded {len(rebuilt)} {what} cache file(s) that did not hold what they must "
              "(damaged or written by something else):\n  " + "\n  ".join(rebuilt))


def text_cache_settings(model_id: str, family: str, text_encoders: list, train, data, options: dict | None = None) -> dict:
    """Everything besides the caption that changes a text-encoder output, for the disk cache's key. A new
    option that changes how captions are encoded adds its entry here (a family's own in `options`)."""
    from sd_lora.data.cache import module_fingerprint

    return {"model": model_id, "family": family, "encoders": module_fingerprint(*text_encoders),
            "dtype": str(next(text_encoders[0].parameters()).dtype), "mixed_precision": train.mixed_precision,
            "clip_skip": train.clip_skip or 1, "max_token_length": data.max_token_length or 75, **(options or {})}


def latent_shape(vae_config, batch: dict) -> tuple[int, ...]:
    if "latents" in batch:
        return tuple(batch["latents"].shape[1:])
    _, _, h, w = batch["pixel_values"].shape
    factor = 2 ** (len(vae_config.block_out_channels) - 1)
    return (vae_config.latent_channels, h // factor, w // factor)


def validation_loss(dataloader, compute_loss, vae_config, objective) -> float | None:
    """Mean of `compute_loss(batch, noise, timesteps)` over the validation set with each image's fixed noise and
    timestep, no input perturbation (comparable across steps); the caller sets eval mode and no_grad."""
    from sd_lora.data import validation_noise

    if dataloader is None:
        return None
    total, count = 0.0, 0
    for batch in dataloader:
        steps, shape = objective.num_train_timesteps, latent_shape(vae_config, batch)
        noise, timesteps = validation_noise(batch["noise_seed"], shape, steps)
        if hasattr(objective, "validation_timesteps"):  # flow: the fixed draw as a shifted sigma
            timesteps = objective.validation_timesteps(timesteps, steps, shape)
        n = len(batch["captions"])
        total += compute_loss(batch, noise, timesteps).item() * n
        count += n
    return total / max(count, 1)
