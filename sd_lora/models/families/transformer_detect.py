"""What SD3 / SD3.5 and FLUX.1 LoRA files say about their family: original block names, FLUX-only modules, the
width of diffusers' blocks, the metadata. Recognisers as in `unet_files`; their ranks are in `sd3.py` / `flux`."""

from __future__ import annotations

__all__ = ["sd3_names", "flux_names", "attention_width", "flux_metadata", "sd3_metadata", "sd3_blocks",
           "t5_only"]

_FLUX_MARKERS = ("double_blocks", "single_blocks", "single_transformer_blocks")
_DENOISER_PREFIXES = ("transformer.", "lora_transformer_", "lycoris_", "base_model.model.")
# first names of diffusers' SD3 / FLUX transformer modules (a UNet's are down_blocks, mid_block, ...)
_TRANSFORMER_ROOTS = ("transformer_blocks", "single_transformer_blocks", "context_embedder", "x_embedder",
                      "pos_embed", "time_text_embed", "norm_out", "proj_out")
_SD3_WIDTHS = (1536, 2432)  # SD3 / SD3.5 Medium, SD3.5 Large
_FLUX_WIDTH = 3072


def _blocks(keys) -> list[str]:
    return [k for k in keys for p in _DENOISER_PREFIXES if k.startswith(p) and k[len(p):].startswith(_TRANSFORMER_ROOTS)]


def sd3_names(keys, tensors, metadata):
    if any("joint_blocks" in k for k in keys) or any(k.startswith("text_encoder_3.") for k in keys):
        return "sd3", "it names SD3's joint blocks or a third text encoder"
    return None


def flux_names(keys, tensors, metadata):
    if any(m in k for k in keys for m in _FLUX_MARKERS):
        return "flux", "it names FLUX's double/single-stream blocks"
    return None


def attention_width(keys, tensors, metadata):
    for key in _blocks(keys):
        if key.endswith(("attn.to_q.lora_A.weight", "attn_to_q.lora_down.weight")) and tensors[key].ndim == 2:
            width = tensors[key].shape[1]
            if width == _FLUX_WIDTH:
                return "flux", f"its attention width is {width} (FLUX.1)"
            if width in _SD3_WIDTHS:
                return "sd3", f"its attention width is {width} (SD3 / SD3.5)"
    return None


def flux_metadata(keys, tensors, metadata):
    if metadata.get("ss_base_model_version", "").startswith("flux") or \
            metadata.get("modelspec.architecture", "").startswith("flux"):
        return "flux", "its metadata says FLUX.1"
    return None


def sd3_metadata(keys, tensors, metadata):
    if metadata.get("ss_base_model_version", "") in ("medium", "5-medium", "5-large") or \
            metadata.get("modelspec.architecture", "").startswith("stable-diffusion-3"):
        return "sd3", "its metadata says SD3"
    return None


def sd3_blocks(keys, tensors, metadata):
    if _blocks(keys):
        return "sd3", "its transformer blocks have no FLUX single-stream blocks"
    return None


def t5_only(keys, tensors, metadata):
    if any(k.startswith("lora_te3_") for k in keys):
        return None, "it has a T5 (lora_te3_) adapter, which SD3 and FLUX files both have"
    return None
