"""Which modules an adapter goes on: presets per component, explicit suffixes, or a regex.

Targets are resolved against the real model to exact module names, so per-module rank/alpha
(3x3 convs get `conv_rank`/`conv_alpha`) can be expressed exactly, whatever the family.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from sd_lora.errors import SdLoraError
from sd_lora.models.families.unet import UNET_PRESETS

__all__ = ["UNET_PRESETS", "TEXT_ENCODER_PRESETS", "ResolvedTargets", "resolve_targets"]

_TE_ATTN = ["q_proj", "k_proj", "v_proj", "out_proj"]
TEXT_ENCODER_PRESETS = {"attn": _TE_ATTN, "attn-mlp": _TE_ATTN + ["fc1", "fc2"], "full": _TE_ATTN + ["fc1", "fc2"]}


@dataclass(frozen=True)
class ResolvedTargets:
    names: list[str]  # exact module names (Linear / Conv2d only)
    conv3x3: list[str]  # the subset with a spatial kernel: they take conv_rank / conv_alpha


def _matches(name: str, suffixes: list[str]) -> bool:
    return any(name == s or name.endswith("." + s) for s in suffixes)


def resolve_targets(model: torch.nn.Module, component: str, *, preset: str = "attn",
                    suffixes: list[str] | None = None, regex: str | None = None,
                    presets: dict[str, list[str]] | None = None) -> ResolvedTargets:
    """Exact names of the Linear/Conv2d modules of `model` to adapt; an SdLoraError if none match.
    `presets`: the family's denoiser presets (default: the UNet's for a denoiser, CLIP's for a text encoder)."""
    if presets is None:
        presets = TEXT_ENCODER_PRESETS if component.startswith("text_encoder") else UNET_PRESETS
    wanted = suffixes if suffixes is not None else presets[preset]
    pattern = re.compile(regex) if regex else None
    names, conv3x3 = [], []
    for name, module in model.named_modules():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        if not (pattern.fullmatch(name) if pattern else _matches(name, wanted)):
            continue
        names.append(name)
        if isinstance(module, torch.nn.Conv2d) and module.kernel_size != (1, 1):
            conv3x3.append(name)
    if not names:
        what = f"regex {regex!r}" if regex else f"targets {wanted}"
        raise SdLoraError(f"network: {what} match no Linear/Conv2d module of the {component} "
                          f"({type(model).__name__}); check network.unet_targets / text_encoder_targets")
    return ResolvedTargets(names, conv3x3)
