"""FLUX.1 (diffusers `FluxTransformer2DModel`) module paths <-> the original BFL checkpoint layout.

Community files (kohya `networks/lora_flux.py`, read by ComfyUI and Forge) use BFL's names: `double_blocks.N`
(`img_attn.qkv` = diffusers to_q/to_k/to_v, `txt_attn.qkv` = add_q/k/v_proj, ...) and `single_blocks.N`, whose
`linear1` holds q, k, v and the MLP input (`proj_mlp`, 4x wider) as row blocks and whose `linear2` is `proj_out`.
Groups are as in `sd3_keys`: one original module, its diffusers parts in row order and their output widths.
"""

from __future__ import annotations

from sd_lora.models.families.sd3_keys import Group, config_value, indices

__all__ = ["Group", "TEXT_ENCODER_PREFIXES", "IMPORT_TEXT_ENCODER_PREFIXES", "DENOISER_PREFIX", "groups",
           "variant", "FULL_SIZE", "MLP_RATIO", "full_size_for", "checkpoint_config"]

DENOISER_PREFIX = "lora_unet_"
# FluxPipeline's text_encoder is CLIP-L and text_encoder_2 is T5-XXL; kohya numbers T5 as the third encoder
TEXT_ENCODER_PREFIXES = {"text_encoder": "lora_te1_", "text_encoder_2": "lora_te3_"}
# OneTrainer numbers FLUX's T5 lora_te2_ (ComfyUI accepts both)
IMPORT_TEXT_ENCODER_PREFIXES = {**TEXT_ENCODER_PREFIXES, "text_encoder_2_alt": "lora_te2_"}
MLP_RATIO = 4  # FluxSingleTransformerBlock's default mlp_ratio

FULL_SIZE = {
    "flux-dev": {"num_layers": 19, "num_single_layers": 38, "num_attention_heads": 24, "attention_head_dim": 128,
                 "guidance_embeds": True},
    "flux-schnell": {"num_layers": 19, "num_single_layers": 38, "num_attention_heads": 24,
                     "attention_head_dim": 128, "guidance_embeds": False},
}


def variant(config) -> str:
    """'flux-dev' (distilled guidance input) or 'flux-schnell'."""
    return "flux-dev" if config_value(config, "guidance_embeds", False) else "flux-schnell"


def _double(i: int, dim: int) -> dict[str, Group]:
    d, o = f"transformer_blocks.{i}", f"double_blocks.{i}"
    qkv = (dim, dim, dim)
    return {
        f"{o}.img_attn.qkv": Group((f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v"), qkv),
        f"{o}.img_attn.proj": Group((f"{d}.attn.to_out.0",)),
        f"{o}.img_mlp.0": Group((f"{d}.ff.net.0.proj",)),
        f"{o}.img_mlp.2": Group((f"{d}.ff.net.2",)),
        f"{o}.img_mod.lin": Group((f"{d}.norm1.linear",)),
        f"{o}.txt_attn.qkv": Group((f"{d}.attn.add_q_proj", f"{d}.attn.add_k_proj", f"{d}.attn.add_v_proj"), qkv),
        f"{o}.txt_attn.proj": Group((f"{d}.attn.to_add_out",)),
        f"{o}.txt_mlp.0": Group((f"{d}.ff_context.net.0.proj",)),
        f"{o}.txt_mlp.2": Group((f"{d}.ff_context.net.2",)),
        f"{o}.txt_mod.lin": Group((f"{d}.norm1_context.linear",)),
    }


def _single(i: int, dim: int) -> dict[str, Group]:
    d, o = f"single_transformer_blocks.{i}", f"single_blocks.{i}"
    return {
        f"{o}.linear1": Group((f"{d}.attn.to_q", f"{d}.attn.to_k", f"{d}.attn.to_v", f"{d}.proj_mlp"),
                              (dim, dim, dim, dim * MLP_RATIO)),
        f"{o}.linear2": Group((f"{d}.proj_out",)),
        f"{o}.modulation.lin": Group((f"{d}.norm.linear",)),
    }


def groups(config) -> dict[str, Group]:
    """{original module name: Group} for every Linear of the transformer described by `config`."""
    dim = int(config_value(config, "num_attention_heads")) * int(config_value(config, "attention_head_dim"))
    out: dict[str, Group] = {}
    for i in range(int(config_value(config, "num_layers"))):
        out.update(_double(i, dim))
    for i in range(int(config_value(config, "num_single_layers"))):
        out.update(_single(i, dim))
    out.update({
        "img_in": Group(("x_embedder",)),
        "txt_in": Group(("context_embedder",)),
        "time_in.in_layer": Group(("time_text_embed.timestep_embedder.linear_1",)),
        "time_in.out_layer": Group(("time_text_embed.timestep_embedder.linear_2",)),
        "vector_in.in_layer": Group(("time_text_embed.text_embedder.linear_1",)),
        "vector_in.out_layer": Group(("time_text_embed.text_embedder.linear_2",)),
        "final_layer.linear": Group(("proj_out",)),
        # BFL's final modulation is (shift, scale), diffusers' norm_out (scale, shift)
        "final_layer.adaLN_modulation.1": Group(("norm_out.linear",), swap_halves=True),
    })
    if config_value(config, "guidance_embeds", False):
        out["guidance_in.in_layer"] = Group(("time_text_embed.guidance_embedder.linear_1",))
        out["guidance_in.out_layer"] = Group(("time_text_embed.guidance_embedder.linear_2",))
    return out


def full_size_for(names: list[str]) -> dict:
    """FLUX.1-dev: schnell's names are a subset of its."""
    return dict(FULL_SIZE["flux-dev"])


def checkpoint_config(names: dict[str, tuple[int, ...]]) -> dict | None:
    """As `sd3_keys.checkpoint_config`, for an original FLUX.1 checkpoint."""
    qkv = names.get("double_blocks.0.img_attn.qkv.weight")
    if qkv is None:
        return None
    return {"num_layers": indices(names, "double_blocks.")[-1] + 1,
            "num_single_layers": (indices(names, "single_blocks.") or [-1])[-1] + 1, "num_attention_heads": 1,
            "attention_head_dim": int(qkv[1]), "guidance_embeds": "guidance_in.in_layer.weight" in names}
