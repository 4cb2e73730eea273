"""Per-timestep loss weightings and thresholds, each as kohya's sd-scripts defines it: SNR, debiased
estimation, the scheduled huber threshold. Pure functions of the schedule and the timesteps; the loss imports
them (and nothing here imports the loss or the noise module, so the two never import each other)."""

from __future__ import annotations

import math

import torch

__all__ = ["snr", "debiased_weights", "huber_threshold"]


def snr(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    ac = alphas_cumprod.to(timesteps.device)[timesteps].double()
    return (ac / (1 - ac)).float()


def debiased_weights(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, prediction_type: str) -> torch.Tensor:
    """kohya's `apply_debiased_estimation`: 1/sqrt(SNR) (v-prediction: 1/(SNR+1)), SNR capped at 1000."""
    s = torch.clamp(snr(alphas_cumprod, timesteps), max=1000.0)
    return 1 / (s + 1) if prediction_type == "v_prediction" else 1 / torch.sqrt(s)


def huber_threshold(schedule: str, huber_c: float, alphas_cumprod: torch.Tensor, timesteps: torch.Tensor,
                    num_train_timesteps: int) -> float | torch.Tensor:
    """kohya's scheduled huber_c: constant c; exponential exp(-a·t) with a = -ln(c)/T (c at t = T, 1 at t = 0);
    snr (1 - c)/(1 + sigma_t)² + c with sigma_t = sqrt((1 - ᾱ_t)/ᾱ_t)."""
    if schedule == "constant":
        return huber_c
    if schedule == "exponential":
        alpha = -math.log(huber_c) / num_train_timesteps
        return torch.exp(-alpha * timesteps.float())
    ac = alphas_cumprod.to(timesteps.device)[timesteps].float()
    sigmas = ((1.0 - ac) / ac) ** 0.5
    return (1 - huber_c) / (1 + sigmas) ** 2 + huber_c
