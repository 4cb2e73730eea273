"""Configs of a single-file (original LDM / SGM layout) checkpoint, without a config file.

Sizes are read off the tensor shapes; what weights cannot show (attention head counts, GroupNorm
groups, activation, sample size, VAE scaling) follows the real model of the family
(`architectures.py`). sd-lora can store exact configs (and tokenizers) in the safetensors
metadata under `METADATA_KEY`; `describe_pipeline` builds that record, and it wins over shapes,
which is how checkpoints that break the conventions (tiny test models) load back exactly.
Everything here reads only key names and shapes, so it works on meta tensors.
"""

from __future__ import annotations

import json
import math
import re
import tempfile
from pathlib import Path

from sd_lora.errors import SdLoraError
from sd_lora.models.families import unet_architectures as architectures
from sd_lora.models.clip_vocab import CLIP_VOCAB_SIZE
from sd_lora.models.families.unet_original_layout import METADATA_KEY, PREFIXES

__all__ = ["METADATA_KEY", "PREFIXES", "TEXT_ENCODERS", "detect_checkpoint_family", "derive_configs",
           "describe_pipeline", "stored_record"]

_PAD_EOS, _PAD_ZERO = "<|endoftext|>", "!"
TEXT_ENCODERS = {  # family -> [(component, checkpoint prefix, layout, tokenizer pad token)]
    "sd1": [("text_encoder", PREFIXES["sd1"], "clip", _PAD_EOS)],
    "sd2": [("text_encoder", PREFIXES["sd2"], "openclip_penultimate", _PAD_ZERO)],
    "sdxl": [("text_encoder", PREFIXES["sdxl_1"], "clip", _PAD_EOS),
             ("text_encoder_2", PREFIXES["sdxl_2"], "openclip", _PAD_ZERO)],
}


def _has_prefix(keys, prefix: str) -> bool:
    return any(k.startswith(prefix) for k in keys)


def detect_checkpoint_family(state_dict: dict, where: str = "checkpoint") -> str:
    """sd1 / sd2 / sdxl from the text-encoder layout (SDXL: two embedders and label_emb)."""
    keys = state_dict.keys()
    if not _has_prefix(keys, PREFIXES["unet"]):
        lora = _has_prefix(keys, "lora_") or any(".lora_" in k or "lora_down" in k for k in keys)
        hint = "it looks like a LoRA adapter, not a base model" if lora else \
            "it holds no UNet weights (model.diffusion_model.*)"
        raise SdLoraError(f"model.pretrained: {where} is not a Stable Diffusion checkpoint in the original "
                          f"layout: {hint}")
    if _has_prefix(keys, PREFIXES["sdxl_2"]) or PREFIXES["unet"] + "label_emb.0.0.weight" in keys:
        if not _has_prefix(keys, PREFIXES["sdxl_1"]):
            raise SdLoraError(f"model.pretrained: {where} looks like an SDXL refiner (one OpenCLIP text encoder); "
                              "only SDXL base-layout models are supported")
        return "sdxl"
    if _has_prefix(keys, PREFIXES["sd2"]):
        return "sd2"
    if _has_prefix(keys, PREFIXES["sd1"]):
        return "sd1"
    raise SdLoraError(f"model.pretrained: {where} has a UNet but no text encoder "
                      "(cond_stage_model.* or conditioner.embedders.*); sd-lora needs a complete checkpoint")


def _sub(state_dict: dict, prefix: str) -> dict:
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def _indices(keys, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in keys if (m := rx.match(k))})


def _shape(sd: dict, key: str, where: str) -> tuple[int, ...]:
    if key not in sd:
        raise SdLoraError(f"model.pretrained: {where} is missing {key!r}; the checkpoint is incomplete or not "
                          "a Stable Diffusion model in the original layout")
    return tuple(sd[key].shape)


def _norm_groups(channels: list[int]) -> int:
    # GroupNorm's group count is not stored in its weights: the real models' 32 when every width allows it.
    return 32 if all(c % 32 == 0 for c in channels) else math.gcd(32, *channels)


def _unet_config(sd: dict, family: str, prediction_type: str, where: str) -> dict:
    u = _sub(sd, PREFIXES["unet"])
    p = PREFIXES["unet"]
    inputs = _indices(u, r"input_blocks\.(\d+)\.")
    ops = [i for i in inputs if f"input_blocks.{i}.0.op.weight" in u]
    lpb = ops[0] - 1 if ops else len(inputs) - 1
    levels = len(ops) + 1
    firsts = [1 + b * (lpb + 1) for b in range(levels)]
    channels = [_shape(u, f"input_blocks.{i}.0.out_layers.3.weight", where + " UNet")[0] for i in firsts]
    depth = [len(_indices(u, rf"input_blocks\.{i}\.1\.transformer_blocks\.(\d+)\.")) for i in firsts]
    attn_keys = sorted(k for k in u if k.endswith("attn2.to_k.weight"))
    if not attn_keys:
        raise SdLoraError(f"model.pretrained: {where} has a UNet without cross-attention ({p}*attn2*); "
                          "not a text-to-image Stable Diffusion model")
    proj_in = next(k for k in sorted(u) if k.endswith(".proj_in.weight"))
    cfg = architectures.unet_config(family)
    cfg.update(
        in_channels=_shape(u, "input_blocks.0.0.weight", where)[1],
        out_channels=_shape(u, "out.2.weight", where)[0],
        layers_per_block=lpb, block_out_channels=channels,
        down_block_types=["CrossAttnDownBlock2D" if d else "DownBlock2D" for d in depth],
        up_block_types=["CrossAttnUpBlock2D" if d else "UpBlock2D" for d in reversed(depth)],
        cross_attention_dim=u[attn_keys[0]].shape[1],
        use_linear_projection=u[proj_in].ndim == 2,
        # Head counts leave no trace in the weights: SD1 uses 8 heads, SD2/SDXL 64-wide heads.
        attention_head_dim=8 if family == "sd1" else [max(c // 64, 1) for c in channels],
        norm_num_groups=_norm_groups(channels),
    )
    if any(d > 1 for d in depth):
        cfg["transformer_layers_per_block"] = [max(d, 1) for d in depth]
    if family == "sd2":
        cfg["sample_size"] = 96 if prediction_type == "v_prediction" else 64  # 768-v vs 512-base
    if family == "sdxl":
        cfg["projection_class_embeddings_input_dim"] = _shape(u, "label_emb.0.0.weight", where)[1]
    if cfg["in_channels"] != 4:
        raise SdLoraError(f"model.pretrained: {where} has a UNet with {cfg['in_channels']} input channels "
                          "(an inpainting or image-conditioned model); sd-lora trains text-to-image models")
    return cfg


def _vae_config(sd: dict, family: str, where: str) -> dict:
    v = _sub(sd, PREFIXES["vae"])
    where = where + " VAE"
    levels = _indices(v, r"encoder\.down\.(\d+)\.")
    cfg = architectures.vae_config(family)
    cfg.update(
        in_channels=_shape(v, "encoder.conv_in.weight", where)[1],
        out_channels=_shape(v, "decoder.conv_out.weight", where)[0],
        latent_channels=_shape(v, "post_quant_conv.weight", where)[0],
        block_out_channels=[_shape(v, f"encoder.down.{i}.block.0.conv2.weight", where)[0] for i in levels],
        down_block_types=["DownEncoderBlock2D"] * len(levels), up_block_types=["UpDecoderBlock2D"] * len(levels),
        layers_per_block=len(_indices(v, r"encoder\.down\.0\.block\.(\d+)\.")),
    )
    cfg["norm_num_groups"] = _norm_groups(cfg["block_out_channels"])
    return cfg


def _text_config(sd: dict, prefix: str, layout: str, base: dict, where: str) -> dict:
    t = _sub(sd, prefix)
    where = f"{where} text encoder ({prefix}*)"
    if layout == "clip":
        vocab, width = _shape(t, "text_model.embeddings.token_embedding.weight", where)
        positions = _shape(t, "text_model.embeddings.position_embedding.weight", where)[0]
        layers = len(_indices(t, r"text_model\.encoder\.layers\.(\d+)\."))
        inner = _shape(t, "text_model.encoder.layers.0.mlp.fc1.weight", where)[0]
        projection = width
    else:
        vocab, width = _shape(t, "token_embedding.weight", where)
        positions = _shape(t, "positional_embedding", where)[0]
        # SD2 stops at the penultimate block; its file still holds the last one.
        layers = len(_indices(t, r"transformer\.resblocks\.(\d+)\.")) - (layout == "openclip_penultimate")
        inner = _shape(t, "transformer.resblocks.0.mlp.c_fc.weight", where)[0]
        projection = t["text_projection"].shape[1] if "text_projection" in t else width
    return dict(base, hidden_size=width, intermediate_size=inner, num_attention_heads=max(width // 64, 1),
                num_hidden_layers=layers, vocab_size=vocab, max_position_embeddings=positions,
                projection_dim=projection, bos_token_id=vocab - 2, eos_token_id=vocab - 1)


def derive_configs(state_dict: dict, family: str, prediction_type: str = "epsilon", where: str = "checkpoint") -> dict:
    """Diffusers/transformers configs of every component, from key names and shapes alone.

    Sizes come from the tensors; what weights cannot show (head counts, norm groups, activation,
    sample size, VAE scaling) follows the real model of `family`. Works on meta tensors.
    """
    configs = {"family": family, "prediction_type": prediction_type,
               "unet": _unet_config(state_dict, family, prediction_type, where),
               "vae": _vae_config(state_dict, family, where)}
    for (name, prefix, layout, _), base in zip(TEXT_ENCODERS[family], architectures.text_encoder_configs(family)):
        configs[name] = _text_config(state_dict, prefix, layout, base, where)
    if family == "sdxl":
        unet = configs["unet"]
        pooled = configs["text_encoder_2"]["projection_dim"]
        unet["addition_time_embed_dim"] = (unet["projection_class_embeddings_input_dim"] - pooled) // 6
    return configs


def stored_record(metadata: dict, where: str = "checkpoint") -> dict | None:
    """The sd-lora record in a checkpoint's metadata, or None."""
    raw = metadata.get(METADATA_KEY)
    if raw is None:
        return None
    try:
        record = json.loads(raw)
    except json.JSONDecodeError as e:
        raise SdLoraError(f"model.pretrained: {where} has unreadable sd-lora metadata ({METADATA_KEY}): {e}") from e
    if not isinstance(record, dict) or record.get("family") not in TEXT_ENCODERS:
        raise SdLoraError(f"model.pretrained: {where} has sd-lora metadata ({METADATA_KEY}) without a known family")
    return record


def _public(config) -> dict:
    return {k: v for k, v in dict(config).items() if not k.startswith("_")}


def _tokenizer_record(tokenizer) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer.save_pretrained(tmp)
        root = Path(tmp)
        if (root / "vocab.json").is_file():
            vocab = json.loads((root / "vocab.json").read_text(encoding="utf-8"))
            merges = (root / "merges.txt").read_text(encoding="utf-8").splitlines()[1:]
        else:  # fast tokenizers (transformers >= 5) save only tokenizer.json
            model = json.loads((root / "tokenizer.json").read_text(encoding="utf-8"))["model"]
            vocab, merges = model["vocab"], [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    return {"vocab": vocab, "merges": [m for m in merges if m], "pad_token": str(tokenizer.pad_token),
            "max_length": int(tokenizer.model_max_length)}


def describe_pipeline(pipe, family: str, prediction_type: str | None = None,
                      with_tokenizers: bool | None = None) -> dict:
    """The record sd-lora stores as JSON under `METADATA_KEY`: exact configs, scheduler, tokenizers.

    `with_tokenizers=None` stores only tokenizers that are not CLIP's (the loader ships CLIP's own).
    """
    record = {
        "format": 1, "family": family,
        "prediction_type": prediction_type or pipe.scheduler.config.get("prediction_type", "epsilon"),
        "unet": _public(pipe.unet.config), "vae": _public(pipe.vae.config),
        "scheduler": {"class": type(pipe.scheduler).__name__, "config": _public(pipe.scheduler.config)},
    }
    for name, *_ in TEXT_ENCODERS[family]:
        record[name] = json.loads(getattr(pipe, name).config.to_json_string(use_diff=False))
    for name in ("tokenizer", "tokenizer_2")[:len(TEXT_ENCODERS[family])]:
        tokenizer = getattr(pipe, name)
        if with_tokenizers or (with_tokenizers is None and len(tokenizer) != CLIP_VOCAB_SIZE):
            record[name] = _tokenizer_record(tokenizer)
    return record
