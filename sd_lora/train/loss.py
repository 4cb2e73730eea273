"""Diffusion training targets, noise and timestep sampling, and the loss with its weightings."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sd_lora.train.weighting import debiased_weights, huber_threshold

__all__ = ["diffusion_target", "sample_noise", "sample_timesteps", "min_snr_weights", "per_sample_loss", "training_loss",
           "weighted_mean", "weighted_mse"]


def diffusion_target(noise_scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                     prediction_type: str) -> torch.Tensor:
    """What the UNet should predict: the noise (epsilon) or the velocity v = a·noise − s·x0."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unknown prediction type {prediction_type!r}")


def sample_noise(shape: torch.Size, generator: torch.Generator, noise_offset: float = 0.0) -> torch.Tensor:
    """Gaussian noise; with an offset, plus a per-image, per-channel constant (lets the model shift brightness)."""
    noise = torch.randn(shape, generator=generator)
    if noise_offset:
        noise = noise + noise_offset * torch.randn((shape[0], shape[1], 1, 1), generator=generator)
    return noise


def sample_timesteps(batch_size: int, generator: torch.Generator, low: int = 0, high: int = 1000) -> torch.Tensor:
    return torch.randint(low, high, (batch_size,), generator=generator)


def min_snr_weights(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, gamma: float,
                    prediction_type: str) -> torch.Tensor:
    """Min-SNR-γ (Hang et al. 2023): min(SNR, γ)/SNR for epsilon, min(SNR, γ)/(SNR + 1) for v-prediction."""
    ac = alphas_cumprod.to(timesteps.device)[timesteps].float()
    snr = ac / (1 - ac).clamp_min(1e-12)
    clipped = torch.minimum(snr, torch.full_like(snr, gamma))
    if prediction_type == "v_prediction":
        return clipped / (snr + 1)
    return clipped / snr.clamp_min(1e-12)


def per_sample_loss(pred: torch.Tensor, target: torch.Tensor, loss_type: str = "l2",
                    huber_c: float | torch.Tensor = 0.1, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Loss per sample (mean over everything but the batch axis). `huber_c` may be one value per sample
    (scheduled huber); `mask` [B, 1, H, W] in [0, 1] (any size: area-resized to the latents) weighs each
    pixel's loss before the mean, as kohya's masked loss does."""
    pred, target = pred.float(), target.float()
    if isinstance(huber_c, torch.Tensor):
        huber_c = huber_c.float().to(pred.device).reshape(-1, *[1] * (pred.ndim - 1))
    if loss_type == "l2":
        elem = F.mse_loss(pred, target, reduction="none")
    elif loss_type == "huber":  # pseudo-Huber: quadratic near 0, linear beyond huber_c
        elem = 2 * huber_c * (torch.sqrt((pred - target) ** 2 + huber_c ** 2) - huber_c)
    elif loss_type == "smooth_l1":
        diff = (pred - target).abs()
        elem = torch.where(diff < huber_c, 0.5 * diff ** 2 / huber_c, diff - 0.5 * huber_c)
    else:
        raise ValueError(f"unknown loss type {loss_type!r}")
    if mask is not None:
        elem = elem * F.interpolate(mask.float().to(elem.device), size=elem.shape[-2:], mode="area")
    return elem.mean(dim=tuple(range(1, pred.ndim)))


def weighted_mean(per_sample: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over the batch of loss × weight (as kohya weighs regularisation images by prior_loss_weight)."""
    if weights is None:
        return per_sample.mean()
    return (per_sample * weights.to(per_sample)).mean()


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    return weighted_mean(per_sample_loss(pred, target, "l2"), weights)


def training_loss(pred: torch.Tensor, target: torch.Tensor, timesteps: torch.Tensor, noise_scheduler, t,
                  prediction_type: str, mask: torch.Tensor | None = None,
                  loss_weight: torch.Tensor | None = None) -> torch.Tensor:
    """The configured loss of train config `t`: (scheduled) huber threshold, masked per-pixel loss, min-SNR or
    debiased-estimation weights, then the batch mean weighted by `loss_weight`."""
    ac = noise_scheduler.alphas_cumprod
    c = huber_threshold(t.huber_schedule, t.huber_c, ac, timesteps, noise_scheduler.config.num_train_timesteps)
    per_sample = per_sample_loss(pred, target, t.loss_type, c, mask)
    if t.min_snr_gamma:
        per_sample = per_sample * min_snr_weights(ac, timesteps, t.min_snr_gamma, prediction_type)
    if t.debiased_estimation_loss:
        per_sample = per_sample * debiased_weights(ac, timesteps, prediction_type).to(per_sample.device)
    return weighted_mean(per_sample, loss_weight)
