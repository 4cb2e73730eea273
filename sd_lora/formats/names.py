"""Module paths of the models <-> names in community (kohya / AUTOMATIC1111 / ComfyUI) LoRA files.

A community name is `<prefix><module path with '.' replaced by '_'>`:
- prefixes `lora_unet_`, `lora_te_` (SD1/SD2), `lora_te1_` / `lora_te2_` (SDXL's two text encoders);
- each family's prefixes and naming come from its family object (`community_prefixes`, `community_naming`):
  SD1/SD2 UNet paths are diffusers' module names; SDXL UNet paths use the original SGM block layout
  (see `sdxl_names`), computed from the UNet config; SD3 / FLUX name original modules (`transformer_files`);
- text-encoder paths always start with `text_model.`, whether or not the installed transformers'
  CLIPTextModel still has that attribute (transformers 5 flattened it; CLIPTextModelWithProjection did not).

Turning `_` back into `.` needs to know which underscores belong to a module's own name
(`to_out`, `proj_in`, `in_layers`, ...): `dotted()` uses a vocabulary of such names.
"""

from __future__ import annotations

from sd_lora.formats.sdxl_names import diffusers_to_sgm, sgm_to_diffusers
from sd_lora.models.families import FILE_FAMILIES, file_family

__all__ = [
    "FAMILY_PREFIXES",
    "UNET_ATTENTION_TARGETS",
    "UNET_CONV_TARGETS",
    "TEXT_ENCODER_TARGETS",
    "component_prefix",
    "canonical_text_encoder_path",
    "model_text_encoder_path",
    "dotted",
    "module_to_community",
    "community_to_module",
]

# each family's community prefixes by component (`Family.community_prefixes`)
FAMILY_PREFIXES = {name: dict(family.community_prefixes) for name, family in FILE_FAMILIES.items()}

# Module-name suffixes the reference trainer adapts (regexes for peft's `target_modules`).
UNET_ATTENTION_TARGETS = (
    r"attn[12]\.to_(q|k|v|out\.0)",
    r"ff\.net\.(0\.proj|2)",
    r"attentions\.\d+\.proj_(in|out)",
)
UNET_CONV_TARGETS = (
    r"resnets\.\d+\.(conv1|conv2|conv_shortcut|time_emb_proj)",
    r"(down|up)samplers\.0\.conv",
)
TEXT_ENCODER_TARGETS = (r"self_attn\.(q|k|v|out)_proj", r"mlp\.fc[12]")

# Module names that contain an underscore themselves, longest first within each first word.
_COMPOUNDS = sorted(
    {
        "down_blocks", "up_blocks", "mid_block", "input_blocks", "output_blocks", "middle_block",
        "transformer_blocks", "to_q", "to_k", "to_v", "to_out", "add_k_proj", "add_v_proj", "add_q_proj",
        "proj_in", "proj_out", "conv_shortcut", "time_emb_proj", "conv_in", "conv_out", "conv_norm_out",
        "time_embedding", "linear_1", "linear_2", "add_embedding", "in_layers", "out_layers", "emb_layers",
        "skip_connection", "time_embed", "label_emb", "text_model", "self_attn", "q_proj", "k_proj", "v_proj",
        "out_proj", "final_layer_norm", "layer_norm1", "layer_norm2", "text_projection", "token_embedding",
        "position_embedding", "norm_out", "conv_act",
        # T5 encoder (SD3 / FLUX lora_te3_)
        "wi_0", "wi_1", "relative_attention_bias", "layer_norm",
    },
    key=lambda c: -c.count("_"),
)


def component_prefix(family: str, component: str) -> str:
    try:
        return FAMILY_PREFIXES[family][component]
    except KeyError:
        raise KeyError(f"no community prefix for component {component!r} of family {family!r}") from None


def canonical_text_encoder_path(path: str) -> str:
    """Path as community names spell it: under `text_model.` unless it is the projection head or a T5 module
    (T5's `encoder.block.N` / `shared`, named from the model's root as kohya and ComfyUI do)."""
    if path.startswith(("encoder.block.", "encoder.final_layer_norm")) or path == "shared":
        return path
    if path.startswith("text_model.") or path == "text_projection" or path.startswith("text_projection."):
        return path
    return "text_model." + path


def model_text_encoder_path(canonical: str, has_text_model: bool) -> str:
    """Path inside a loaded text encoder; CLIPTextModel of transformers 5 has no `text_model` level."""
    if has_text_model or not canonical.startswith("text_model."):
        return canonical
    return canonical[len("text_model."):]


def dotted(name: str) -> str:
    """`down_blocks_0_attentions_0_proj_in` -> `down_blocks.0.attentions.0.proj_in`."""
    words = name.split("_")
    parts, i = [], 0
    while i < len(words):
        for compound in _COMPOUNDS:
            n = compound.count("_") + 1
            if "_".join(words[i:i + n]) == compound:
                parts.append(compound)
                i += n
                break
        else:
            parts.append(words[i])
            i += 1
    return ".".join(parts)


def module_to_community(component: str, path: str, family: str, unet_config) -> str:
    """Community module name (no `.lora_down.weight` suffix) of a module path of `component`; the family's
    `community_naming` says how its denoiser's modules are named."""
    naming = file_family(family).community_naming
    if naming == "original":
        from sd_lora.formats.transformer_files import module_name

        return module_name(family, unet_config, component, path)
    prefix = component_prefix(family, component)
    if component == "unet":
        if naming == "sgm":
            path = diffusers_to_sgm(path, unet_config)
    elif component.startswith("text_encoder"):
        path = canonical_text_encoder_path(path)
    return prefix + path.replace(".", "_")


def _component_of(name: str, family: str) -> tuple[str, str]:
    for component, prefix in FAMILY_PREFIXES[family].items():
        if name.startswith(prefix):
            return component, name[len(prefix):]
    raise KeyError(f"{name}: prefix is not one of {sorted(FAMILY_PREFIXES[family].values())} used by {family}")


def community_to_module(name: str, family: str, unet_config) -> tuple[str, str]:
    """(component, module path) of a community module name; UNet paths are diffusers paths.

    Text-encoder paths come back canonical (under `text_model.`); see `model_text_encoder_path`.
    Raises KeyError naming the problem when the name cannot belong to this family's models.
    """
    component, rest = _component_of(name, family)
    path = dotted(rest)
    if path.replace(".", "_") != rest:
        raise KeyError(f"{name}: cannot split into a module path")
    if component != "unet":
        return component, canonical_text_encoder_path(path)
    if path.split(".", 1)[0] in ("input_blocks", "middle_block", "output_blocks", "time_embed", "label_emb", "out"):
        try:
            path = sgm_to_diffusers(path, unet_config)
        except (KeyError, ValueError):
            raise KeyError(f"{name}: no such block in this UNet ({path})") from None
    return component, path
