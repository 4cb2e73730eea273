"""The training run's data-side helpers: latent and text-encoder caches (computed once before the first step)
and the validation loss."""

from __future__ import annotations

import torch

from sd_lora.models.encode import encode_latents

__all__ = ["setup_caches", "latent_shape", "validation_loss"]


def setup_caches(recipe, dataset) -> None:
    """Latents and text-encoder outputs computed once; with both cached, VAE and text encoders leave the GPU.
    The text cache lives in memory for this run and is encoded with its clip skip and caption windows."""
    from sd_lora.data import cache_latents, cache_text_outputs, text_cache_blocker

    d, device = recipe.cfg.data, recipe.accelerator.device
    latents_cached = texts_cached = False
    if d.cache_latents:
        encoder_id = f"{recipe.model_info.location}:{recipe.vae.dtype}"
        stats = cache_latents(dataset, lambda px: encode_latents(recipe.vae, px.to(device)),
                              to_disk=d.cache_latents_to_disk, encoder_id=encoder_id)
        print(f"latent cache: {stats.encoded} image(s) encoded, {stats.reused} reused from the disk cache")
        latents_cached = True
    if d.cache_text_encoder_outputs:
        blocker = text_cache_blocker(dataset, recipe.cfg.network.train_text_encoder)
        if blocker:
            print(f"text-encoder outputs are not cached: {blocker}")
        else:
            with torch.no_grad():
                n = cache_text_outputs(dataset, lambda caps: recipe.encode_text(caps, recipe.text_encoders))
            print(f"text-encoder outputs cached for {n} distinct captions")
            texts_cached = True
    if latents_cached and texts_cached and device.type != "cpu":
        for model in (recipe.vae, *recipe.text_encoders):
            model.to("cpu")


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
