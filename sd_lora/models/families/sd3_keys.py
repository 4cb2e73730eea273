"""SD3 / SD3.5 (diffusers `SD3Transformer2DModel`) module paths <-> the original SAI checkpoint layout.

Community LoRA files (kohya `networks/lora_sd3.py`, read by ComfyUI and AUTOMATIC1111) name the MMDiT's modules
as the original checkpoint does (`joint_blocks.N.x_block.attn.qkv`, ...), where one Linear holds what diffusers
keeps in several (q, k and v). A `Group` is one original module and the diffusers modules whose weights are its
row blocks, in order; `sizes` are their output widths (None when the group is a plain rename). `swap_halves`
marks the modulation layers whose two output halves (shift, scale) diffusers stores the other way round.
Everything here is computed from the transformer config alone (a dict or a diffusers config object).
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["Group", "TEXT_ENCODER_PREFIXES", "IMPORT_TEXT_ENCODER_PREFIXES", "DENOISER_PREFIX", "groups",
           "variant", "FULL_SIZE", "config_value", "full_size_for", "checkpoint_config", "indices"]

DENOISER_PREFIX = "lora_unet_"
# CLIP-L, CLIP-G, T5-XXL as kohya's lora_sd3.py names them (the diffusers pipeline's component names as keys)
TEXT_ENCODER_PREFIXES = {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te2_", "text_encoder_3": "lora_te3_"}
IMPORT_TEXT_ENCODER_PREFIXES = dict(TEXT_ENCODER_PREFIXES)

# diffusers configs of the released checkpoints (the fields the names depend on)
FULL_SIZE = {
    "sd3-medium": {"num_layers": 24, "num_attention_heads": 24, "attention_head_dim": 64,
                   "caption_projection_dim": 1536, "dual_attention_layers": (), "qk_norm": None},
    "sd3.5-medium": {"num_layers": 24, "num_attention_heads": 24, "attention_head_dim": 64,
                     "caption_projection_dim": 1536, "dual_attention_layers": tuple(range(13)), "qk_norm": "rms_norm"},
    "sd3.5-large": {"num_layers": 38, "num_attention_heads": 38, "attention_head_dim": 64,
                    "caption_projection_dim": 2432, "dual_attention_layers": (), "qk_norm": "rms_norm"},
}


class Group(NamedTuple):
    parts: tuple[str, ...]
    sizes: tuple[int, ...] | None = None
    swap_halves: bool = False


def config_value(config, key: str, default=None):
    if isinstance(config, dict):
        return config.get(key, default)
    get = getattr(config, "get", None)
    return get(key, default) if get is not None else getattr(config, key, default)


def variant(config) -> str:
    """'sd3.5-large', 'sd3.5-medium' or 'sd3-medium', as kohya tells them apart (qk-norm, dual attention)."""
    if not config_value(config, "qk_norm"):
        return "sd3-medium"
    return "sd3.5-medium" if config_value(config, "dual_attention_layers") else "sd3.5-large"


def _block(i: int, last: bool, dual: bool, dim: int) -> dict[str, Group]:
    d, o = f"transformer_blocks.{i}", f"joint_blocks.{i}"
    qkv = (dim, dim, dim)
    out = {
        f"{o}.x_block.attn.qkv": Group((f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v"), qkv),
        f"{o}.x_block.attn.proj": Group((f"{d}.attn.to_out.0",)),
        f"{o}.x_block.mlp.fc1": Group((f"{d}.ff.net.0.proj",)),
        f"{o}.x_block.mlp.fc2": Group((f"{d}.ff.net.2",)),
        f"{o}.x_block.adaLN_modulation.1": Group((f"{d}.norm1.linear",)),
        f"{o}.context_block.attn.qkv": Group(
            (f"{d}.attn.add_q_proj", f"{d}.attn.add_k_proj", f"{d}.attn.add_v_proj"), qkv),
        # the last context block only feeds the image stream: diffusers keeps (scale, shift), SAI (shift, scale)
        f"{o}.context_block.adaLN_modulation.1": Group((f"{d}.norm1_context.linear",), swap_halves=last),
    }
    if dual:
        out[f"{o}.x_block.attn2.qkv"] = Group((f"{d}.attn2.to_q", f"{d}.attn2.to_k", f"{d}.attn2.to_v"), qkv)
        out[f"{o}.x_block.attn2.proj"] = Group((f"{d}.attn2.to_out.0",))
    if not last:
        out[f"{o}.context_block.attn.proj"] = Group((f"{d}.attn.to_add_out",))
        out[f"{o}.context_block.mlp.fc1"] = Group((f"{d}.ff_context.net.0.proj",))
        out[f"{o}.context_block.mlp.fc2"] = Group((f"{d}.ff_context.net.2",))
    return out


_EMBEDDERS = {
    "x_embedder.proj": Group(("pos_embed.proj",)),
    "context_embedder": Group(("context_embedder",)),
    "t_embedder.mlp.0": Group(("time_text_embed.timestep_embedder.linear_1",)),
    "t_embedder.mlp.2": Group(("time_text_embed.timestep_embedder.linear_2",)),
    "y_embedder.mlp.0": Group(("time_text_embed.text_embedder.linear_1",)),
    "y_embedder.mlp.2": Group(("time_text_embed.text_embedder.linear_2",)),
    "final_layer.linear": Group(("proj_out",)),
    "final_layer.adaLN_modulation.1": Group(("norm_out.linear",), swap_halves=True),
}


def groups(config) -> dict[str, Group]:
    """{original module name: Group} for every Linear / Conv2d of the transformer described by `config`."""
    layers = int(config_value(config, "num_layers"))
    dim = int(config_value(config, "num_attention_heads")) * int(config_value(config, "attention_head_dim"))
    dual = set(config_value(config, "dual_attention_layers") or ())
    out: dict[str, Group] = {}
    for i in range(layers):
        out.update(_block(i, i == layers - 1, i in dual, dim))
    out.update(_EMBEDDERS)
    return out


def full_size_for(names: list[str]) -> dict:
    """The released model a file's names fit: SD3.5 Large when a joint block beyond 23 is named, else SD3.5
    Medium (its names include SD3 Medium's)."""
    import re

    blocks = [int(m.group(1)) for n in names for m in [re.search(r"(?:joint|transformer)_blocks[._](\d+)", n)] if m]
    return dict(FULL_SIZE["sd3.5-large" if blocks and max(blocks) >= 24 else "sd3.5-medium"])


def indices(names, head: str, tail: str = "") -> list[int]:
    return sorted({int(k.split(".")[1]) for k in names if k.startswith(head) and k.endswith(tail)})


def checkpoint_config(names: dict[str, tuple[int, ...]]) -> dict | None:
    """What the module names and row blocks depend on, from an original SD3 checkpoint's names and shapes (no
    key prefix); None when it is not one."""
    qkv = names.get("joint_blocks.0.x_block.attn.qkv.weight")
    if qkv is None:
        return None
    return {"num_layers": indices(names, "joint_blocks.")[-1] + 1, "num_attention_heads": 1,
            "attention_head_dim": int(qkv[1]),
            "dual_attention_layers": indices(names, "joint_blocks.", ".x_block.attn2.qkv.weight"),
            "qk_norm": "rms_norm" if any(".attn.ln_q." in k for k in names) else None}
