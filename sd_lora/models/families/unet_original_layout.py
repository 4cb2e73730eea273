"""The original (LDM/SGM) single-file layout of Stable Diffusion checkpoints, written from diffusers.

`pipeline_to_original` turns a diffusers pipeline into the one state dict most users hold
(`model.diffusion_model.*`, `first_stage_model.*`, `cond_stage_model.*` / `conditioner.embedders.*`).
It is the exact inverse of diffusers' `convert_ldm_unet/vae/clip/open_clip_checkpoint`, with the
block indices computed from the component configs, so any width or depth round-trips. Pure
functions over state dicts; loading lives in `single_file`.
"""

from __future__ import annotations

import torch

__all__ = [
    "METADATA_KEY", "PREFIXES", "UNET_PREFIX", "VAE_PREFIX", "TEXT_PREFIXES",
    "unet_to_original", "vae_to_original", "clip_to_original", "open_clip_to_original",
    "pipeline_to_original",
]

METADATA_KEY = "sd_lora.base_model"  # safetensors metadata entry: sd-lora's exact configs (JSON)
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
PREFIXES = {
    "unet": UNET_PREFIX, "vae": VAE_PREFIX,
    "sd1": "cond_stage_model.transformer.", "sd2": "cond_stage_model.model.",
    "sdxl_1": "conditioner.embedders.0.transformer.", "sdxl_2": "conditioner.embedders.1.model.",
}
# Per family, one (prefix, kind) per text encoder: HF-CLIP keeps transformers' names, OpenCLIP has its own.
TEXT_PREFIXES = {
    "sd1": [(PREFIXES["sd1"], "clip")],
    "sd2": [(PREFIXES["sd2"], "open_clip")],
    "sdxl": [(PREFIXES["sdxl_1"], "clip"), (PREFIXES["sdxl_2"], "open_clip")],
}

_UNET_TOP = {
    "time_embedding.linear_1.": "time_embed.0.", "time_embedding.linear_2.": "time_embed.2.",
    "conv_in.": "input_blocks.0.0.", "conv_norm_out.": "out.0.", "conv_out.": "out.2.",
    "add_embedding.linear_1.": "label_emb.0.0.", "add_embedding.linear_2.": "label_emb.0.2.",
}
_UNET_RESNET = [("norm1", "in_layers.0"), ("conv1", "in_layers.2"), ("norm2", "out_layers.0"),
                ("conv2", "out_layers.3"), ("time_emb_proj", "emb_layers.1"), ("conv_shortcut", "skip_connection")]
_VAE_ATTN = [("group_norm.", "norm."), ("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "proj_out.")]
_OPEN_CLIP_LAYER = [("self_attn.out_proj.", "attn.out_proj."), ("layer_norm1.", "ln_1."), ("layer_norm2.", "ln_2."),
                    ("mlp.fc1.", "mlp.c_fc."), ("mlp.fc2.", "mlp.c_proj.")]


def _rename(key: str, prefixes: dict[str, str], inner: dict[str, list]) -> str:
    for old in sorted(prefixes, key=len, reverse=True):
        if key.startswith(old):
            rest = key[len(old):]
            for a, b in inner.get(old, []):
                rest = rest.replace(a, b, 1) if rest.startswith(a) else rest
            return prefixes[old] + rest
    raise ValueError(f"no original-layout name for {key!r}")


def unet_to_original(state: dict, config: dict) -> dict:
    """Diffusers UNet2DConditionModel weights -> `model.diffusion_model.*` names."""
    per = config["layers_per_block"] + 1
    prefixes, inner = dict(_UNET_TOP), {}
    for b, up_type in enumerate(config["up_block_types"]):
        for j in range(per - 1):
            prefixes[f"down_blocks.{b}.resnets.{j}."] = f"input_blocks.{1 + b * per + j}.0."
            prefixes[f"down_blocks.{b}.attentions.{j}."] = f"input_blocks.{1 + b * per + j}.1."
        prefixes[f"down_blocks.{b}.downsamplers.0.conv."] = f"input_blocks.{(b + 1) * per}.0.op."
        for j in range(per):
            prefixes[f"up_blocks.{b}.resnets.{j}."] = f"output_blocks.{b * per + j}.0."
            prefixes[f"up_blocks.{b}.attentions.{j}."] = f"output_blocks.{b * per + j}.1."
        slot = 2 if "CrossAttn" in up_type else 1
        prefixes[f"up_blocks.{b}.upsamplers.0.conv."] = f"output_blocks.{b * per + per - 1}.{slot}.conv."
    prefixes.update({"mid_block.resnets.0.": "middle_block.0.", "mid_block.attentions.0.": "middle_block.1.",
                     "mid_block.resnets.1.": "middle_block.2."})
    for old in prefixes:
        if ".resnets." in old:
            inner[old] = _UNET_RESNET
    return {UNET_PREFIX + _rename(k, prefixes, inner): v for k, v in state.items()}


def vae_to_original(state: dict, config: dict) -> dict:
    """Diffusers AutoencoderKL weights -> `first_stage_model.*` names (attention as 1x1 convs)."""
    n = len(config["block_out_channels"])
    prefixes = {"encoder.conv_norm_out.": "encoder.norm_out.", "decoder.conv_norm_out.": "decoder.norm_out."}
    for part in ("encoder", "decoder"):
        prefixes.update({f"{part}.mid_block.resnets.0.": f"{part}.mid.block_1.",
                         f"{part}.mid_block.resnets.1.": f"{part}.mid.block_2.",
                         f"{part}.mid_block.attentions.0.": f"{part}.mid.attn_1.",
                         f"{part}.conv_in.": f"{part}.conv_in.", f"{part}.conv_out.": f"{part}.conv_out."})
    for i in range(n):
        prefixes[f"encoder.down_blocks.{i}.resnets."] = f"encoder.down.{i}.block."
        prefixes[f"encoder.down_blocks.{i}.downsamplers.0.conv."] = f"encoder.down.{i}.downsample.conv."
        prefixes[f"decoder.up_blocks.{i}.resnets."] = f"decoder.up.{n - 1 - i}.block."
        prefixes[f"decoder.up_blocks.{i}.upsamplers.0.conv."] = f"decoder.up.{n - 1 - i}.upsample.conv."
    prefixes.update({"quant_conv.": "quant_conv.", "post_quant_conv.": "post_quant_conv."})
    inner = {k: _VAE_ATTN for k in prefixes if ".attentions." in k}
    out = {}
    for key, value in state.items():
        new = _rename(key, prefixes, inner).replace("conv_shortcut.", "nin_shortcut.")
        if ".mid.attn_1." in new and new.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]
        out[VAE_PREFIX + new] = value
    return out


def clip_to_original(state: dict, prefix: str) -> dict:
    """transformers CLIPTextModel weights -> HF-CLIP names under `prefix` (always with `text_model.`)."""
    return {prefix + (k if k.startswith("text_model.") else "text_model." + k): v for k, v in state.items()}


def open_clip_to_original(state: dict, prefix: str, unused_last_layer: bool = False) -> dict:
    """transformers CLIP text weights -> OpenCLIP names (fused q/k/v, transposed projection).

    `unused_last_layer`: SD2 conditions on OpenCLIP's penultimate layer, so its checkpoints hold
    one more resblock than the diffusers text encoder; it is written as zeros to keep the layout.
    """
    state = {k.removeprefix("text_model."): v for k, v in state.items()}
    out = {prefix + "token_embedding.weight": state.pop("embeddings.token_embedding.weight"),
           prefix + "positional_embedding": state.pop("embeddings.position_embedding.weight")}
    state.pop("embeddings.position_ids", None)
    if "text_projection.weight" in state:
        out[prefix + "text_projection"] = state.pop("text_projection.weight").T.contiguous()
    layers = sorted({int(k.split(".")[2]) for k in state if k.startswith("encoder.layers.")})
    for n in layers:
        src, dst = f"encoder.layers.{n}.", f"{prefix}transformer.resblocks.{n}."
        for kind in ("weight", "bias"):
            qkv = [state.pop(f"{src}self_attn.{p}_proj.{kind}") for p in "qkv"]
            out[f"{dst}attn.in_proj_{kind}"] = torch.cat(qkv)
        for key in [k for k in state if k.startswith(src)]:
            out[dst + _rename(key[len(src):], dict(_OPEN_CLIP_LAYER), {})] = state.pop(key)
    for key in list(state):
        out[prefix + key.replace("final_layer_norm.", "ln_final.")] = state.pop(key)
    if unused_last_layer:
        last, extra = f"{prefix}transformer.resblocks.{layers[-1]}.", f"{prefix}transformer.resblocks.{layers[-1] + 1}."
        for key in [k for k in out if k.startswith(last)]:
            out[extra + key[len(last):]] = torch.zeros_like(out[key])
        like = out[prefix + "token_embedding.weight"]
        out.setdefault(prefix + "text_projection", torch.eye(like.shape[1], dtype=like.dtype, device=like.device))
    return out


def pipeline_to_original(pipe, family: str) -> dict:
    """All weights of a diffusers SD pipeline as one original-layout state dict."""
    out = unet_to_original(pipe.unet.state_dict(), pipe.unet.config)
    out.update(vae_to_original(pipe.vae.state_dict(), pipe.vae.config))
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if family == "sdxl" else [])
    for (prefix, kind), encoder in zip(TEXT_PREFIXES[family], encoders):
        state = encoder.state_dict()
        if kind == "clip":
            out.update(clip_to_original(state, prefix))
        else:
            out.update(open_clip_to_original(state, prefix, unused_last_layer=family == "sd2"))
    return {k: v for k, v in out.items() if not k.endswith("position_ids")}
