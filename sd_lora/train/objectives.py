"""Training objectives: what the denoiser is trained to predict, from which noisy input, at which timesteps.

- `DDPMObjective` (SD1/SD2/SDXL): noise (epsilon) or v prediction on the model's DDPM schedule, with kohya's
  noise and loss options (offset, multires, input perturbation, min-SNR, debiased estimation, huber schedules).
- `FlowObjective` (SD3): rectified flow, x_t = (1 - s)·x0 + s·noise and target noise - x0, with the timestep
  samplings and loss weightings of diffusers' and kohya's SD3 trainers.

A family names its objective (`Family.objective`); `build_objective` makes it. All randomness comes from the
caller's generator, so a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import math

import torch

from sd_lora.train import loss as L
from sd_lora.train.noise import draw_training_noise

__all__ = ["DDPMObjective", "FlowObjective", "build_objective"]


class DDPMObjective:
    def __init__(self, scheduler_config: dict, prediction_type: str, t):
        from diffusers import DDPMScheduler

        self.t, self.prediction_type = t, prediction_type
        self.scheduler = DDPMScheduler.from_config(
            scheduler_config, prediction_type=prediction_type, rescale_betas_zero_snr=t.zero_terminal_snr,
            timestep_spacing="trailing" if t.zero_terminal_snr else "leading")
        self.num_train_timesteps = self.scheduler.config.num_train_timesteps

    def draw(self, shape, generator: torch.Generator):
        """(target noise, input noise, timesteps) of one global micro-batch."""
        return draw_training_noise(shape, generator, self.t)

    def noisy(self, latents, input_noise, timesteps):
        return self.scheduler.add_noise(latents, input_noise, timesteps)

    def target(self, latents, noise, timesteps):
        return L.diffusion_target(self.scheduler, latents, noise, timesteps, self.prediction_type)

    def loss(self, pred, target, timesteps, mask=None, loss_weight=None):
        return L.training_loss(pred, target, timesteps, self.scheduler, self.t, self.prediction_type, mask, loss_weight)


class FlowObjective:
    """Rectified flow. Timesteps are sigma·1000 as diffusers' flow-matching transformers take them; sigma is the
    sampled u in (0, 1) pushed through the schedule's shift s: sigma = s·u / (1 + (s - 1)·u)."""

    num_train_timesteps = 1000

    def __init__(self, scheduler_config: dict, t):
        self.t = t
        given = getattr(t, "flow_shift", None)
        self.shift = float(given if given is not None else scheduler_config.get("shift", 1.0))
        sampling = getattr(t, "timestep_sampling", "auto")
        self.sampling = "logit_normal" if sampling in (None, "auto") else sampling
        self.weighting = getattr(t, "loss_weighting", "none") or "none"

    def _u(self, n: int, generator: torch.Generator) -> torch.Tensor:
        t, kind = self.t, self.sampling
        if kind == "logit_normal":
            return torch.sigmoid(torch.randn(n, generator=generator) * getattr(t, "logit_std", 1.0)
                                 + getattr(t, "logit_mean", 0.0))
        u = torch.rand(n, generator=generator)
        if kind == "mode":
            return 1 - u - getattr(t, "mode_scale", 1.29) * (torch.cos(math.pi * u / 2) ** 2 - 1 + u)
        if kind == "cosmap":
            return 1 - 1 / (torch.tan(math.pi / 2 * u) + 1)
        return u  # uniform, sigma_sqrt (a weighting; its timesteps are uniform)

    def sigmas(self, u: torch.Tensor) -> torch.Tensor:
        s = self.shift
        return s * u / (1 + (s - 1) * u)

    def draw(self, shape, generator: torch.Generator):
        noise = torch.randn(shape, generator=generator)
        sigmas = self.sigmas(self._u(shape[0], generator).clamp(1e-5, 1 - 1e-5))
        return noise, noise, sigmas * self.num_train_timesteps

    def _sigma(self, timesteps, like):
        return (timesteps.to(like.device, torch.float32) / self.num_train_timesteps).view(-1, *[1] * (like.ndim - 1))

    def noisy(self, latents, input_noise, timesteps):
        s = self._sigma(timesteps, latents)
        return ((1 - s) * latents.float() + s * input_noise.float()).to(latents.dtype)

    def target(self, latents, noise, timesteps):
        return noise - latents

    def weights(self, timesteps) -> torch.Tensor | None:
        sigma = timesteps.float() / self.num_train_timesteps
        if self.weighting == "sigma_sqrt":
            return sigma ** -2.0
        if self.weighting == "cosmap":
            return 2 / (math.pi * (1 - 2 * sigma + 2 * sigma ** 2))
        return None

    def loss(self, pred, target, timesteps, mask=None, loss_weight=None):
        per_sample = L.per_sample_loss(pred.float(), target.float(), self.t.loss_type, self.t.huber_c, mask)
        w = self.weights(timesteps)
        if w is not None:
            per_sample = per_sample * w.to(per_sample.device)
        return L.weighted_mean(per_sample, loss_weight)

    def validation_timesteps(self, raw: torch.Tensor, ddpm_steps: int) -> torch.Tensor:
        """A validation image's fixed DDPM-style draw in [0, ddpm_steps) as a flow timestep."""
        return self.sigmas((raw.float() + 0.5) / ddpm_steps) * self.num_train_timesteps


def build_objective(kind: str, scheduler_config: dict, prediction_type: str, t):
    if kind == "flow":
        return FlowObjective(scheduler_config, t)
    return DDPMObjective(scheduler_config, prediction_type, t)
