"""What SD1, SD2 and SDXL LoRA files say about their family, and the metadata kohya writes for them.

Structure beats size: SDXL files have two text-encoder prefixes or SGM block names, SD1 files have 4-D (1x1 conv)
proj_in/proj_out; widths (768 / 1024 / 2048 cross-attention) decide the rest, and the `ss_base_model_version`
metadata is the last resort (ranks in `Family.file_recognisers`). Each recogniser is `(keys, tensors, metadata) -> (family, why) | None`.
"""

from __future__ import annotations

__all__ = ["two_text_encoders", "sgm_blocks", "by_shapes", "sdxl_metadata", "sd2_metadata", "sd1_metadata", "sd1_or_sd2"]

_CROSS_DIM = {768: "sd1", 1024: "sd2", 2048: "sdxl"}
_TE_WIDTH = {768: "sd1", 1024: "sd2"}
_SGM_BLOCKS = ("lora_unet_input_blocks", "lora_unet_middle_block", "lora_unet_output_blocks")


def two_text_encoders(keys, tensors, metadata):
    if any(k.startswith(("lora_te1_", "lora_te2_", "text_encoder_2.")) for k in keys):
        return "sdxl", "it has keys for two text encoders"
    return None


def sgm_blocks(keys, tensors, metadata):
    if any(k.startswith(_SGM_BLOCKS) for k in keys):
        return "sdxl", "its UNet keys use the SGM block layout"
    return None


def _down(tensors, key: str):
    return tensors.get(key + ".lora_down.weight", tensors.get(key + ".lora_A.weight"))


def by_shapes(keys, tensors, metadata):
    for key in keys:
        name = key.split(".lora_", 1)[0]
        down = _down(tensors, name)
        if down is None:
            continue
        if name.endswith(("proj_in", "proj_out")) and "attentions" in name.replace("_", "."):
            if down.ndim == 4:
                return "sd1", "its proj_in/proj_out are 1x1 convolutions"
        if name.replace("_", ".").endswith(("attn2.to.k", "attn2.to_k")) and down.ndim == 2:
            family = _CROSS_DIM.get(down.shape[1])
            if family:
                return family, f"its cross-attention width {down.shape[1]}"
        if ("lora_te_" in name or name.startswith("text_encoder.")) and name.endswith("q_proj") and down.ndim == 2:
            family = _TE_WIDTH.get(down.shape[1])
            if family:
                return family, f"its text encoder width {down.shape[1]}"
    return None


def sdxl_metadata(keys, tensors, metadata):
    version = metadata.get("ss_base_model_version", "")
    return ("sdxl", f"ss_base_model_version is {version}") if version.startswith("sdxl") else None


def sd2_metadata(keys, tensors, metadata):
    if metadata.get("ss_v2") == "True" or metadata.get("ss_base_model_version", "").startswith("sd_v2"):
        return "sd2", "its metadata says SD2"
    return None


def sd1_metadata(keys, tensors, metadata):
    version = metadata.get("ss_base_model_version", "")
    return ("sd1", f"ss_base_model_version is {version}") if version.startswith("sd_v1") else None


def sd1_or_sd2(keys, tensors, metadata):
    if keys and all(k.startswith(("lora_te_", "lora_unet_", "text_encoder.", "unet.")) for k in keys):
        return None, "its keys fit SD1 and SD2 alike"
    return None
