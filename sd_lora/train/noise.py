"""Noise and loss-weighting variants, each as kohya's sd-scripts defines it.

- multi-resolution (pyramid) noise: `multires_noise`
- input perturbation: `perturbed_input_noise`
- debiased estimation, scheduled huber threshold: `debiased_weights`, `huber_threshold` (in
  sd_lora.train.weighting, which the loss imports; re-exported here)
All randomness comes from the caller's generator (reproducible, resumable, independent of the process layout).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sd_lora.train.weighting import debiased_weights, huber_threshold, snr

__all__ = ["multires_noise", "perturbed_input_noise", "debiased_weights", "huber_threshold", "snr",
           "draw_training_noise"]


def multires_noise(noise: torch.Tensor, generator: torch.Generator, iterations: int, discount: float) -> torch.Tensor:
    """kohya's `pyramid_noise_like`: level i (i = 0 .. iterations-1) is Gaussian noise at 1/r**i of the size
    (r uniform in [2, 4) per level), bilinearly upscaled and weighted by discount**i, added to `noise`; stops
    after a level that reaches 1 pixel; the sum is divided by its standard deviation (over the whole batch)."""
    b, c, h, w = noise.shape
    noise = noise.clone()
    for i in range(iterations):
        r = float(torch.rand((), generator=generator)) * 2 + 2
        hn, wn = max(1, int(h / r ** i)), max(1, int(w / r ** i))
        level = torch.randn((b, c, hn, wn), generator=generator)
        noise += F.interpolate(level, size=(h, w), mode="bilinear") * discount ** i
        if hn == 1 or wn == 1:
            break
    return noise / noise.std()


def perturbed_input_noise(noise: torch.Tensor, generator: torch.Generator, gamma: float) -> torch.Tensor:
    """Input perturbation (Ning et al. 2023, kohya's ip_noise_gamma): the noise that goes into the UNet input,
    noise + gamma * fresh noise; the training target stays `noise`."""
    return noise + gamma * torch.randn(noise.shape, generator=generator)


def draw_training_noise(shape, generator: torch.Generator, t) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(target noise, noise for the UNet input, timesteps) of one global micro-batch under train config `t`:
    Gaussian noise (+ offset), timesteps, then multires levels and input perturbation when configured."""
    from sd_lora.train.loss import sample_noise, sample_timesteps

    noise = sample_noise(shape, generator, t.noise_offset)
    timesteps = sample_timesteps(shape[0], generator, t.min_timestep, t.max_timestep)
    if t.multires_noise_iterations:
        noise = multires_noise(noise, generator, t.multires_noise_iterations, t.multires_noise_discount)
    noisy_input = perturbed_input_noise(noise, generator, t.ip_noise_gamma) if t.ip_noise_gamma else noise
    return noise, noisy_input, timesteps
