"""Guess a file's format and model family from its keys, shapes and metadata; a pipeline's family.

Structure beats size: SDXL files have two text-encoder prefixes or SGM block names, SD1 files have
4-D (1x1 conv) proj_in/proj_out; widths (768 / 1024 / 2048 cross-attention) decide the rest, and the
`ss_base_model_version` metadata is the last resort.
"""

from __future__ import annotations

import torch

from sd_lora.formats.community import is_community_key
from sd_lora.formats.diffusers_format import is_diffusers_key

__all__ = ["detect_format", "guess_family", "pipeline_family", "FAMILY_NAMES"]

FAMILY_NAMES = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL"}
_CROSS_DIM = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
_TE_WIDTH = {768: "sd1", 1024: "sd2"}


def detect_format(tensors: dict[str, torch.Tensor]) -> str:
    """'community', 'diffusers', or 'unknown' (mixed or foreign keys)."""
    keys = list(tensors)
    if keys and all(is_community_key(k) for k in keys):
        return "community"
    if keys and all(is_diffusers_key(k) for k in keys):
        return "diffusers"
    return "unknown"


def _down(tensors: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    return tensors.get(key + ".lora_down.weight", tensors.get(key + ".lora_A.weight"))


def _from_shapes(tensors: dict[str, torch.Tensor]) -> tuple[str | None, str]:
    for key in tensors:
        name = key.split(".lora_", 1)[0]
        down = _down(tensors, name)
        if down is None:
            continue
        if name.endswith(("proj_in", "proj_out")) and "attentions" in name.replace("_", "."):
            if down.ndim == 4:
                return "sd1", "proj_in/proj_out are 1x1 convolutions"
        if name.replace("_", ".").endswith(("attn2.to.k", "attn2.to_k")) and down.ndim == 2:
            family = _CROSS_DIM.get(down.shape[1])
            if family:
                return family, f"cross-attention width {down.shape[1]}"
        if ("lora_te_" in name or name.startswith("text_encoder.")) and name.endswith("q_proj") and down.ndim == 2:
            family = _TE_WIDTH.get(down.shape[1])
            if family:
                return family, f"text encoder width {down.shape[1]}"
    return None, ""


def guess_family(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[str | None, str]:
    """(family or None, why) from the keys, the shapes, then the metadata."""
    keys = list(tensors)
    if any(k.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")) for k in keys):
        return "sdxl", "it has keys for two text encoders"
    if any(k.startswith(("lora_unet_input_blocks", "lora_unet_middle_block", "lora_unet_output_blocks")) for k in keys):
        return "sdxl", "its UNet keys use the SGM block layout"
    family, why = _from_shapes(tensors)
    if family:
        return family, f"its {why}"
    version = metadata.get("ss_base_model_version", "")
    if version.startswith("sdxl"):
        return "sdxl", f"ss_base_model_version is {version}"
    if metadata.get("ss_v2") == "True" or version.startswith("sd_v2"):
        return "sd2", "its metadata says SD2"
    if version.startswith("sd_v1"):
        return "sd1", f"ss_base_model_version is {version}"
    if keys and all(k.startswith(("lora_te_", "lora_unet_", "text_encoder.", "unet.")) for k in keys):
        return None, "its keys fit SD1 and SD2 alike"
    return None, "its keys do not say"


def pipeline_family(pipe) -> str:
    """Family of a loaded diffusers pipeline: two text encoders -> sdxl; conv proj_in -> sd1; else sd2."""
    if getattr(pipe, "text_encoder_2", None) is not None:
        return "sdxl"
    return "sd2" if pipe.unet.config.get("use_linear_projection") else "sd1"
