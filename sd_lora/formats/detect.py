"""Guess a file's format and model family from its keys, shapes and metadata; a pipeline's family.

Each family contributes recognisers (`Family.file_recognisers`: structure first, then sizes, then metadata);
`guess_family` asks them all in rank order and takes the first answer.
"""

from __future__ import annotations

import torch

from sd_lora.formats.community import is_community_key
from sd_lora.formats.diffusers_format import is_diffusers_key
from sd_lora.models.families import FILE_FAMILIES, file_family_of_pipeline, file_recognisers

__all__ = ["detect_format", "guess_family", "pipeline_family", "FAMILY_NAMES"]

FAMILY_NAMES = {name: family.short_name for name, family in FILE_FAMILIES.items()}


def detect_format(tensors: dict[str, torch.Tensor]) -> str:
    """'community', 'diffusers', or 'unknown' (mixed or foreign keys)."""
    keys = list(tensors)
    if keys and all(is_community_key(k) for k in keys):
        return "community"
    if keys and all(is_diffusers_key(k) for k in keys):
        return "diffusers"
    return "unknown"


def guess_family(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[str | None, str]:
    """(family or None, why) from the keys, the shapes, then the metadata."""
    keys = list(tensors)
    for recognise in file_recognisers():
        found = recognise(keys, tensors, metadata)
        if found:
            return found
    return None, "its keys do not say"


def pipeline_family(pipe) -> str:
    """Family of a loaded diffusers pipeline (its class and denoiser config)."""
    return file_family_of_pipeline(pipe).name
