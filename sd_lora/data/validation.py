"""Validation: which images are held out, and the fixed noise/timesteps that make its loss comparable
from one evaluation to the next."""

from __future__ import annotations

import hashlib
import random

import torch

__all__ = ["holdout_keys", "stable_seed", "validation_noise"]


def holdout_keys(keys: list[str], fraction: float, seed: int) -> set[str]:
    """round(n * fraction) keys (at least one, never all), chosen by `seed` independently of listing order."""
    if fraction <= 0 or len(keys) < 2:
        return set()
    count = min(len(keys) - 1, max(1, round(len(keys) * fraction)))
    order = sorted(keys)
    random.Random(f"validation:{seed}").shuffle(order)
    return set(order[:count])


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from its parts, the same in every process and Python run (unlike hash())."""
    digest = hashlib.sha256(":".join(map(str, parts)).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def validation_noise(noise_seeds: torch.Tensor, latent_shape: tuple[int, ...],
                     num_train_timesteps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(noise [B, *latent_shape], timesteps [B]) drawn from each sample's own seed, so every evaluation of
    the same validation image uses the same noise and timestep whatever the batch composition."""
    noise, timesteps = [], []
    for seed in noise_seeds.tolist():
        g = torch.Generator().manual_seed(int(seed))
        timesteps.append(torch.randint(0, num_train_timesteps, (1,), generator=g))
        noise.append(torch.randn(latent_shape, generator=g))
    return torch.stack(noise), torch.cat(timesteps)
