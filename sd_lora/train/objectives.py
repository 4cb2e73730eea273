"""Training objectives: what the denoiser is trained to predict, from which noisy input, at which timesteps.

- `DDPMObjective` (SD1/SD2/SDXL): noise (epsilon) or v prediction on the model's DDPM schedule, with kohya's
  noise and loss options (offset, multires, input perturbation, min-SNR, debiased estimation, huber schedules).
- `FlowObjective` (SD3): rectified flow, x_t = (1 - s)·x0 + s·noise and target noise - x0, with the timestep
  samplings and loss weightings of diffusers' and kohya's SD3 trainers.

A family names its objective (`Family.objective`); `build_objective` makes it. All randomness comes from the
caller's generator, so a resumed run draws exactly what an uninterrupted one would.
"""

from __future__ import annotations

import torch

from sd_lora.train import flow as F, loss as L
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
    """Rectified flow through sd_lora.train.flow: sigmas drawn by train.timestep_sampling and shifted by the model
    scheduler's shift (fixed for SD3; by the latent size for a scheduler with dynamic shifting, FLUX) or
    train.flow_shift; timesteps passed to the model are sigma·1000."""

    num_train_timesteps = 1000

    def __init__(self, scheduler_config: dict, t):
        self.t, self.scheduler_config = t, dict(scheduler_config)
        self.weighting = F.loss_weighting_for(t.timestep_sampling, t.loss_weighting)

    def shift(self, latent_shape) -> float:
        h, w = latent_shape[-2:]
        return F.scheduler_shift(self.scheduler_config, F.flux_image_seq_len(h, w), self.t.flow_shift)

    def draw(self, shape, generator: torch.Generator):
        t = self.t
        sigmas = F.sample_sigmas(shape[0], generator, t.timestep_sampling, logit_mean=t.logit_mean,
                                 logit_std=t.logit_std, mode_scale=t.mode_scale, shift=self.shift(shape))
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        return noise, noise, F.model_timesteps(sigmas)

    def noisy(self, latents, input_noise, timesteps):
        return F.noisy_input(latents, input_noise, timesteps / self.num_train_timesteps)

    def target(self, latents, noise, timesteps):
        return F.flow_target(latents, noise)

    def loss(self, pred, target, timesteps, mask=None, loss_weight=None):
        per_sample = L.per_sample_loss(pred, target, self.t.loss_type, self.t.huber_c, mask)
        weights = F.loss_weights(timesteps.float() / self.num_train_timesteps, self.weighting)
        return L.weighted_mean(per_sample * weights.to(per_sample.device), loss_weight)

    def validation_timesteps(self, raw: torch.Tensor, steps: int, latent_shape) -> torch.Tensor:
        """A validation image's fixed draw in [0, steps) as a shifted flow timestep."""
        sigmas = ((raw.float() + 1) / steps).clamp(F.MIN_SIGMA, 1.0)
        return F.model_timesteps(F.shift_sigmas(sigmas, self.shift(latent_shape)))


def build_objective(kind: str, scheduler_config: dict, prediction_type: str, t):
    if kind == "flow":
        return FlowObjective(scheduler_config, t)
    return DDPMObjective(scheduler_config, prediction_type, t)
