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

FAMILY_NAMES = {"sd1": "SD1", "sd2": "SD2", "sdxl": "SDXL", "sd3": "SD3", "flux": "FLUX.1"}
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
    transformer = _transformer_family(keys, tensors, metadata)
    if transformer[0] or transformer[1]:
        return transformer
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


_FLUX_MARKERS = ("double_blocks", "single_blocks", "single_transformer_blocks")
_DENOISER_PREFIXES = ("transformer.", "lora_transformer_", "lycoris_", "base_model.model.")
# first names of diffusers' SD3 / FLUX transformer modules (a UNet's are down_blocks, mid_block, ...)
_TRANSFORMER_ROOTS = ("transformer_blocks", "single_transformer_blocks", "context_embedder", "x_embedder",
                      "pos_embed", "time_text_embed", "norm_out", "proj_out")


def _transformer_family(keys: list[str], tensors, metadata: dict[str, str]) -> tuple[str | None, str]:
    """SD3 / FLUX from original block names, FLUX-only modules, the width of diffusers' blocks, the metadata."""
    if any("joint_blocks" in k for k in keys) or any(k.startswith("text_encoder_3.") for k in keys):
        return "sd3", "it names SD3's joint blocks or a third text encoder"
    if any(m in k for k in keys for m in _FLUX_MARKERS):
        return "flux", "it names FLUX's double/single-stream blocks"
    blocks = [k for k in keys for p in _DENOISER_PREFIXES
              if k.startswith(p) and k[len(p):].startswith(_TRANSFORMER_ROOTS)]
    for key in blocks:
        if key.endswith(("attn.to_q.lora_A.weight", "attn_to_q.lora_down.weight")) and tensors[key].ndim == 2:
            width = tensors[key].shape[1]
            if width == 3072:
                return "flux", "its attention width is 3072 (FLUX.1)"
            if width in (1536, 2432):
                return "sd3", f"its attention width is {width} (SD3 / SD3.5)"
    version = metadata.get("ss_base_model_version", "")
    architecture = metadata.get("modelspec.architecture", "")
    if version.startswith("flux") or architecture.startswith("flux"):
        return "flux", "its metadata says FLUX.1"
    if version in ("medium", "5-medium", "5-large") or architecture.startswith("stable-diffusion-3"):
        return "sd3", "its metadata says SD3"
    if blocks:
        return "sd3", "its transformer blocks have no FLUX single-stream blocks"
    if any(k.startswith("lora_te3_") for k in keys):
        return None, "it has a T5 (lora_te3_) adapter, which SD3 and FLUX files both have"
    return None, ""


def pipeline_family(pipe) -> str:
    """Family of a loaded diffusers pipeline: its transformer's class for SD3 / FLUX; two text encoders ->
    sdxl; conv proj_in -> sd1; else sd2."""
    transformer = getattr(pipe, "transformer", None)
    if transformer is not None:
        name = type(transformer).__name__
        if name.startswith("SD3"):
            return "sd3"
        if name.startswith("Flux"):
            return "flux"
    if getattr(pipe, "text_encoder_2", None) is not None:
        return "sdxl"
    return "sd2" if pipe.unet.config.get("use_linear_projection") else "sd1"
