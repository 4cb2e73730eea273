"""The training run's data-side helpers: latent and text-encoder caches (computed once before the first step)
and the validation loss."""

from __future__ import annotations

import torch

from sd_lora.models.encode import encode_latents

__all__ = ["setup_caches", "text_cache_settings", "latent_shape", "validation_loss"]


def setup_caches(recipe, dataset) -> None:
    """Latents and text-encoder outputs computed once, when `choose_caches` says so (the plan printed the same
    decision), held in memory in the dtype the UNet reads, or on disk past the memory budget; then the VAE and
    text encoders are freed or moved off the GPU when nothing needs them any more (sd_lora.train.memory)."""
    from sd_lora.data.cache import (cache_latents, cache_text_outputs, choose_caches, latent_cache_bytes,
                                    memory_budget, module_fingerprint)
    from sd_lora.data.plan import samples_seen
    from sd_lora.train.memory import release_encoders

    d, t, device = recipe.cfg.data, recipe.cfg.train, recipe.accelerator.device
    seen = samples_seen(len(dataset), t.batch_size, t.gradient_accumulation_steps, recipe.accelerator.num_processes,
                        t.max_steps, t.max_epochs)
    choice = choose_caches(d, dataset, recipe.cfg.network.train_text_encoder, seen)
    budget = memory_budget(d.cache_memory_gb)
    recipe.cache_choice, latents_cached, texts_cached = choice, False, False
    if choice.latents:
        vae = recipe.vae
        dtype = _unet_dtype(recipe)
        factor = 2 ** (len(vae.config.block_out_channels) - 1)
        size = latent_cache_bytes(dataset, vae.config.latent_channels, factor, dtype)
        to_disk = d.cache_latents_to_disk or size > budget
        encoder_id = f"{recipe.model_info.location}:{vae.dtype}:{module_fingerprint(vae)}"
        stats = cache_latents(dataset, lambda px: encode_latents(vae, px.to(device)), to_disk=to_disk,
                              encoder_id=encoder_id, dtype=dtype, latent_channels=vae.config.latent_channels,
                              downscale=factor)
        _note_rebuilt("latent", stats.rebuilt)
        budget -= stats.nbytes
        where = "streamed from disk" + ("" if d.cache_latents_to_disk else
                                        f" ({size / 2**30:.2f} GiB > budget {(budget + stats.nbytes) / 2**30:.2f} GiB)") \
            if to_disk else f"in memory, {stats.nbytes / 2**20:.1f} MiB {str(dtype).replace('torch.', '')}"
        print(f"latent cache: {stats.encoded} image(s) encoded, {stats.reused} reused from the disk cache; {where}")
        latents_cached = True
    elif d.cache_latents == "auto":
        print(f"latent cache: off ({choice.latents_reason})")
    if choice.text:
        recipe.text_cache_settings = text_cache_settings(recipe)  # the disk cache's key (kept for the record)
        with torch.no_grad(), recipe.accelerator.autocast():  # exactly as the uncached step encodes
            stats = cache_text_outputs(dataset, lambda caps: recipe.encode_text(caps, recipe.text_encoders),
                                       to_disk=d.cache_text_encoder_outputs_to_disk, settings=recipe.text_cache_settings,
                                       memory_budget=max(budget, 0))
        _note_rebuilt("text-encoder output", stats.rebuilt)
        where = "streamed from disk" if stats.to_disk else f"in memory, {stats.nbytes / 2**20:.1f} MiB"
        print(f"text-encoder outputs cached for {stats.encoded + stats.reused} distinct captions "
              f"({stats.encoded} encoded, {stats.reused} reused from the disk cache; {where})")
        texts_cached = True
    elif d.cache_text_encoder_outputs is not False:
        print(f"text-encoder outputs are not cached: {choice.text_reason}")
    release_encoders(recipe, latents_cached, texts_cached)


def _note_rebuilt(what: str, rebuilt: list[str]) -> None:
    if rebuilt:
        print(f"note: re-encoded {len(rebuilt)} {what} cache file(s) that did not hold what they must "
              "(damaged or written by something else):\n  " + "\n  ".join(rebuilt))


def _unet_dtype(recipe) -> torch.dtype:
    dtype = recipe.unet.dtype
    return dtype if dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.float32


def text_cache_settings(recipe) -> dict:
    """Everything besides the caption that changes a text-encoder output, for the disk cache's key. A new
    option that changes how captions are encoded adds its entry here."""
    from sd_lora.data.cache import module_fingerprint

    t, d = recipe.cfg.train, recipe.cfg.data
    return {"model": recipe.model_info.location, "family": recipe.family,
            "encoders": module_fingerprint(*recipe.text_encoders),
            "dtype": str(next(recipe.text_encoders[0].parameters()).dtype), "mixed_precision": t.mixed_precision,
            "clip_skip": t.clip_skip or 1, "max_token_length": d.max_token_length or 75}


def latent_shape(recipe, batch: dict) -> tuple[int, ...]:
    if "latents" in batch:
        return tuple(batch["latents"].shape[1:])
    _, _, h, w = batch["pixel_values"].shape
    factor = 2 ** (len(recipe.vae.config.block_out_channels) - 1)
    return (recipe.vae.config.latent_channels, h // factor, w // factor)


def validation_loss(recipe) -> float | None:
    """Mean loss over the validation set with each image's fixed noise and timestep, no input perturbation
    (comparable across steps); the caller sets eval mode and no_grad."""
    from sd_lora.data import validation_noise

    if recipe.val_dataloader is None:
        return None
    total, count = 0.0, 0
    for batch in recipe.val_dataloader:
        noise, timesteps = validation_noise(batch["noise_seed"], latent_shape(recipe, batch),
                                            recipe.noise_scheduler.config.num_train_timesteps)
        n = len(batch["captions"])
        total += recipe.compute_loss(batch, noise, timesteps).item() * n
        count += n
    return total / max(count, 1)
