"""Diffusion training targets and the per-sample weighted loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["diffusion_target", "weighted_mse"]


def diffusion_target(noise_scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                     prediction_type: str) -> torch.Tensor:
    """What the UNet should predict: the noise (epsilon) or the velocity v = a·noise − s·x0."""
    if prediction_type == "epsilon":
        return noise
    if prediction_type == "v_prediction":
        return noise_scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unknown prediction type {prediction_type!r}")


def weighted_mse(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error per sample, then a weighted mean over the batch (prior-preservation weights)."""
    per_sample = F.mse_loss(pred.float(), target.float(), reduction="none").mean(dim=tuple(range(1, pred.ndim)))
    if weights is None:
        return per_sample.mean()
    weights = weights.to(per_sample)
    return (per_sample * weights).sum() / weights.sum().clamp_min(1e-8)
