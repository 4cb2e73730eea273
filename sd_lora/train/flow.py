"""Flow-matching (rectified flow) training maths for the transformer families (SD3 / SD3.5, FLUX.1).

Pure functions on tensors. Every random draw comes from the caller's CPU `torch.Generator` (the recipe keeps one
for exact resume), in a fixed order, so the same generator state gives the same batch on any device.

Conventions (the SD3 paper's, which FLUX and kohya's `shift`/`flux_shift` modes share): sigma is the noise level,
x_t = (1 - sigma)·x0 + sigma·noise, the model predicts the velocity noise - x0, and a timestep draw u in [0, 1] is
sigma before the shift. diffusers' SD3/FLUX training scripts index their descending timestep table with u, i.e.
they use sigma = 1 - u: the same distribution for uniform, mode and logit-normal with mean 0; with logit_mean > 0
sd-lora (like the paper) favours noisier timesteps, where diffusers' scripts favour cleaner ones.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

import torch

__all__ = [
    "SAMPLING_SCHEMES", "LOSS_WEIGHTINGS", "AUTO_SCHEME", "MIN_SIGMA", "FlowBatch", "sample_sigmas", "shift_sigmas",
    "flux_image_seq_len", "scheduler_shift", "noisy_input", "flow_target", "model_timesteps", "loss_weights",
    "loss_weighting_for", "flow_batch", "pack_latents", "unpack_latents", "latent_image_ids", "text_ids",
    "guidance_input",
]

# sigma_sqrt and cosmap are diffusers' `weighting_scheme` names: uniform draws whose loss is weighted
SAMPLING_SCHEMES = ("logit_normal", "mode", "uniform", "sigma_sqrt", "cosmap")
LOSS_WEIGHTINGS = ("none", "sigma_sqrt", "cosmap")
# what train.timestep_sampling = "auto" draws for both SD3 and FLUX; the families differ only by their scheduler's
# shift (scheduler_shift): SD3 as its paper and diffusers train it (logit-normal, shift 3), FLUX as kohya's
# `flux_shift` mode (logit-normal, resolution-dependent shift)
AUTO_SCHEME = "logit_normal"
# diffusers' smallest training sigma before its shift (timestep 1 of 1000): a draw of exactly 0 would give a clean
# input with an infinite sigma_sqrt weight
MIN_SIGMA = 1e-3


@dataclass(frozen=True)
class FlowBatch:
    """One training batch's model input and target. `timesteps` is sigma·1000 (what SD3's transformer takes; FLUX's
    takes sigma = timesteps / 1000, as FluxPipeline passes it); `weights` has one loss weight per sample."""

    noisy: torch.Tensor
    target: torch.Tensor
    timesteps: torch.Tensor
    sigmas: torch.Tensor
    weights: torch.Tensor


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}, got {value!r}")


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    """sigma' = shift·sigma / (1 + (shift - 1)·sigma), as FlowMatchEulerDiscreteScheduler shifts its sigmas (FLUX's
    exponential time shift with mu is the same map with shift = exp(mu)). shift > 1 spends more steps on noise."""
    if not shift > 0:
        raise ValueError(f"the timestep shift must be positive, got {shift}")
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def sample_sigmas(batch_size: int, generator: torch.Generator, scheme: str = "logit_normal", *,
                  logit_mean: float = 0.0, logit_std: float = 1.0, mode_scale: float = 1.29,
                  shift: float = 1.0) -> torch.Tensor:
    """`batch_size` noise levels in [shift(MIN_SIGMA), 1] (float32, CPU), drawn from `generator` by diffusers'
    `compute_density_for_timestep_sampling`: logit_normal = sigmoid(N(logit_mean, logit_std)), mode = the SD3
    paper's f_mode(u; mode_scale), uniform / sigma_sqrt / cosmap = U[0, 1); then shifted by `shift`.
    'auto' is AUTO_SCHEME."""
    from diffusers.training_utils import compute_density_for_timestep_sampling

    scheme = AUTO_SCHEME if scheme == "auto" else scheme
    _check_choice("the timestep sampling scheme", scheme, SAMPLING_SCHEMES)
    u = compute_density_for_timestep_sampling(scheme, batch_size, logit_mean=logit_mean, logit_std=logit_std,
                                              mode_scale=mode_scale, device="cpu", generator=generator)
    return shift_sigmas(u.float().clamp(MIN_SIGMA, 1.0), shift)


def flux_image_seq_len(latent_height: int, latent_width: int) -> int:
    """The number of image tokens FLUX sees for a latent of this size (2x2 patches)."""
    return (latent_height // 2) * (latent_width // 2)


def scheduler_shift(scheduler_config: Mapping, image_seq_len: int | None = None,
                    flow_shift: float | None = None) -> float:
    """The timestep shift for training: `flow_shift` when given, else the model's scheduler's: its fixed `shift`
    (SD3: 3.0) or, with `use_dynamic_shifting` (FLUX), the resolution-dependent one from `image_seq_len` (mu by
    diffusers' `calculate_shift` over the scheduler's base/max values; shift = exp(mu), or mu for a 'linear'
    time_shift_type): 1.88 at 512 px, 3.16 at 1024 px."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    if flow_shift is not None:
        return float(flow_shift)
    if not scheduler_config.get("use_dynamic_shifting", False):
        return float(scheduler_config.get("shift", 1.0))
    if image_seq_len is None:
        raise ValueError("this scheduler shifts by resolution (use_dynamic_shifting): give image_seq_len")
    mu = calculate_shift(image_seq_len, scheduler_config.get("base_image_seq_len", 256),
                         scheduler_config.get("max_image_seq_len", 4096), scheduler_config.get("base_shift", 0.5),
                         scheduler_config.get("max_shift", 1.15))
    return mu if scheduler_config.get("time_shift_type", "exponential") == "linear" else math.exp(mu)


def noisy_input(latents: torch.Tensor, noise: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """x_t = (1 - sigma)·x0 + sigma·noise, sigma per sample (shape [B])."""
    s = sigmas.to(latents.device, latents.dtype).view(-1, *([1] * (latents.ndim - 1)))
    return (1.0 - s) * latents + s * noise


def flow_target(latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The rectified-flow velocity the model learns: noise - x0."""
    return noise - latents


def model_timesteps(sigmas: torch.Tensor) -> torch.Tensor:
    """The timestep on diffusers' 0-1000 scale: sigma·1000."""
    return sigmas * 1000.0


def loss_weights(sigmas: torch.Tensor, weighting: str = "none") -> torch.Tensor:
    """Per-sample loss weights by diffusers' `compute_loss_weighting_for_sd3`: none = 1, sigma_sqrt = sigma^-2,
    cosmap = 2 / (pi·(1 - 2·sigma + 2·sigma²))."""
    from diffusers.training_utils import compute_loss_weighting_for_sd3

    _check_choice("the loss weighting", weighting, LOSS_WEIGHTINGS)
    return compute_loss_weighting_for_sd3(weighting, sigmas=sigmas.float())


def loss_weighting_for(scheme: str, loss_weighting: str) -> str:
    """The loss weighting in effect: `loss_weighting`, or for the schemes named after diffusers' weighting_scheme
    (sigma_sqrt, cosmap) with loss_weighting 'none', that scheme's weighting, as diffusers applies it."""
    scheme = AUTO_SCHEME if scheme == "auto" else scheme
    _check_choice("the timestep sampling scheme", scheme, SAMPLING_SCHEMES)
    _check_choice("the loss weighting", loss_weighting, LOSS_WEIGHTINGS)
    if loss_weighting == "none" and scheme in LOSS_WEIGHTINGS:
        return scheme
    return loss_weighting


def flow_batch(latents: torch.Tensor, generator: torch.Generator, *, scheme: str = "logit_normal",
               shift: float = 1.0, weighting: str = "none", logit_mean: float = 0.0, logit_std: float = 1.0,
               mode_scale: float = 1.29) -> FlowBatch:
    """Draw sigmas, then noise (float32 on the CPU, from `generator`, in that order) for `latents` ([B, ...]), and
    return the noisy input and target in `latents`' dtype and device, the timesteps and the loss weights
    (`weighting` as given: resolve the config's pair with `loss_weighting_for` first)."""
    sigmas = sample_sigmas(latents.shape[0], generator, scheme, logit_mean=logit_mean, logit_std=logit_std,
                           mode_scale=mode_scale, shift=shift)
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32).to(latents.device, latents.dtype)
    weights = loss_weights(sigmas, weighting)
    device = latents.device
    return FlowBatch(noisy=noisy_input(latents, noise, sigmas), target=flow_target(latents, noise),
                     timesteps=model_timesteps(sigmas).to(device), sigmas=sigmas.to(device), weights=weights.to(device))


def pack_latents(latents: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] latents to FLUX's [B, H/2·W/2, 4·C] tokens of 2x2 patches (FluxPipeline._pack_latents)."""
    from diffusers import FluxPipeline

    b, c, h, w = latents.shape
    if h % 2 or w % 2:
        raise ValueError(f"FLUX packs 2x2 latent patches: the latent size must be even, got {h}x{w}")
    return FluxPipeline._pack_latents(latents, b, c, h, w)


def unpack_latents(packed: torch.Tensor, latent_height: int, latent_width: int) -> torch.Tensor:
    """The inverse of `pack_latents` (FluxPipeline._unpack_latents, at latent scale)."""
    from diffusers import FluxPipeline

    return FluxPipeline._unpack_latents(packed, latent_height, latent_width, vae_scale_factor=1)


def latent_image_ids(latent_height: int, latent_width: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """FLUX's image position ids [H/2·W/2, 3] = (0, row, column) per packed token
    (FluxPipeline._prepare_latent_image_ids)."""
    from diffusers import FluxPipeline

    return FluxPipeline._prepare_latent_image_ids(1, latent_height // 2, latent_width // 2, device, dtype)


def text_ids(seq_len: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """FLUX's text position ids: [seq_len, 3] zeros, as FluxPipeline.encode_prompt makes them."""
    return torch.zeros(seq_len, 3, device=device, dtype=dtype)


def guidance_input(batch_size: int, guidance_scale: float, device=None) -> torch.Tensor:
    """FLUX dev's distilled-guidance input, one float32 value per sample (the transformer scales it by 1000 itself,
    as it does the timestep); None for a model without a guidance embedding is the caller's choice."""
    return torch.full((batch_size,), float(guidance_scale), device=device, dtype=torch.float32)
