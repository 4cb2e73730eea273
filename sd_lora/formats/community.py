"""Community (kohya / AUTOMATIC1111 / ComfyUI) state dicts <-> sd-lora's neutral adapter layout.

The neutral layout, `AdapterWeights`, is `{component: {module path: {param: tensor}}}` with module
paths as in the diffusers / transformers models (text encoders canonical, under `text_model.`) and
params named as peft names them (`lora_A`, `lora_B`, `hada_w1_a`, `lokr_w1`, ...), plus the community
`alpha` (0-dim; scale = alpha / rank) and `dora_scale` (community layout). Tensors are never copied or
cast here, so community -> neutral -> community is bit-identical.
"""

from __future__ import annotations

import torch

from sd_lora.formats.names import FAMILY_PREFIXES, community_to_module, module_to_community

__all__ = [
    "AdapterWeights",
    "COMMUNITY_SUFFIXES",
    "LORA_PARAMS",
    "LOHA_PARAMS",
    "LOKR_PARAMS",
    "split_community_key",
    "to_community",
    "from_community",
    "adapter_type",
    "is_community_key",
    "DORA_A1111_NOTE",
]

# sd-lora writes peft's per-output DoRA magnitude as `dora_scale [out, 1]`; ComfyUI reads that axis correctly.
DORA_A1111_NOTE = ("DoRA file (dora_scale [out, 1]): AUTOMATIC1111's Lora extension loads it without an error but "
                   "implements only the [1, in] layout, so it silently computes wrong weights there; use it in "
                   "ComfyUI or sd-lora (or train a plain LoRA for AUTOMATIC1111)")

# LyCORIS / kohya OFT multiplies the weight by a block rotation of its output features; peft's OFT and BOFT rotate
# the input features, so no peft layer holds such a file exactly.
LYCORIS_OFT_NOTE = ("a LyCORIS OFT/BOFT file (oft_blocks): it rotates each module's output features and peft's OFT "
                    "its input features, so sd-lora cannot apply it exactly; use it in ComfyUI or AUTOMATIC1111")

AdapterWeights = dict[str, dict[str, dict[str, torch.Tensor]]]

LORA_PARAMS = ("lora_A", "lora_B")
LOHA_PARAMS = ("hada_w1_a", "hada_w1_b", "hada_w2_a", "hada_w2_b", "hada_t1", "hada_t2")
LOKR_PARAMS = ("lokr_w1", "lokr_w1_a", "lokr_w1_b", "lokr_w2", "lokr_w2_a", "lokr_w2_b", "lokr_t2")

# community key suffix -> neutral param name
COMMUNITY_SUFFIXES = {
    "lora_down.weight": "lora_A",
    "lora_up.weight": "lora_B",
    "alpha": "alpha",
    "dora_scale": "dora_scale",
    **{p: p for p in LOHA_PARAMS + LOKR_PARAMS},
}
_TO_SUFFIX = {v: k for k, v in COMMUNITY_SUFFIXES.items()}


# transformer-family layouts whose module names contain dots (peft, ai-toolkit / ComfyUI, XLabs)
_DOTTED_PREFIXES = ("base_model.model.", "diffusion_model.", "double_blocks.", "single_blocks.", "joint_blocks.")
_OTHER_PREFIXES = ("lora_te3_", "lora_transformer_", "lycoris_")
# suffixes of those layouts, longest first so that `.lora.down.weight` wins over XLabs' `.down.weight`
_DOTTED_SUFFIXES = sorted({**COMMUNITY_SUFFIXES, "lora_A.weight": "lora_A", "lora_B.weight": "lora_B",
                           "lora.down.weight": "lora_A", "lora.up.weight": "lora_B", "down.weight": "lora_A",
                           "up.weight": "lora_B", "lora_magnitude_vector": "lora_magnitude_vector"}.items(),
                          key=lambda kv: -len(kv[0]))


def split_community_key(key: str) -> tuple[str, str] | None:
    """`lora_unet_x.lora_down.weight` -> (`lora_unet_x`, `lora_A`); None if the suffix is unknown."""
    if key.startswith(_DOTTED_PREFIXES):
        return next(((key[: -len(s) - 1], p) for s, p in _DOTTED_SUFFIXES if key.endswith("." + s)), None)
    name, _, suffix = key.partition(".")
    param = COMMUNITY_SUFFIXES.get(suffix)
    return (name, param) if param else None


def is_community_key(key: str) -> bool:
    return key.startswith(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_") + _OTHER_PREFIXES + _DOTTED_PREFIXES)


def to_community(weights: AdapterWeights, family: str, unet_config) -> dict[str, torch.Tensor]:
    """Neutral layout -> community state dict (names per `names.module_to_community`)."""
    from sd_lora.formats import transformer_files

    if transformer_files.is_transformer_family(family):
        return transformer_files.to_community(weights, family, unet_config)
    out: dict[str, torch.Tensor] = {}
    for component, modules in weights.items():
        for path, params in modules.items():
            name = module_to_community(component, path, family, unet_config)
            for param, tensor in params.items():
                out[f"{name}.{_TO_SUFFIX[param]}"] = tensor
    return out


def from_community(
    state_dict: dict[str, torch.Tensor], family: str, unet_config
) -> tuple[AdapterWeights, list[str]]:
    """Community state dict -> (neutral layout, problems). Problems name each key that did not map."""
    from sd_lora.formats import transformer_files

    if transformer_files.is_transformer_family(family):
        return transformer_files.from_community(state_dict, family, unet_config)
    weights: AdapterWeights = {c: {} for c in FAMILY_PREFIXES[family]}
    problems: list[str] = []
    for key, tensor in state_dict.items():
        split = split_community_key(key)
        if split is None:
            kind = key.partition(".")[2]
            problems.append(f"{key}: {LYCORIS_OFT_NOTE}" if kind in ("oft_blocks", "rescale") else
                            f"{key}: unknown tensor kind {kind!r}")
            continue
        name, param = split
        try:
            component, path = community_to_module(name, family, unet_config)
        except KeyError as e:
            problems.append(str(e.args[0]))
            continue
        weights[component].setdefault(path, {})[param] = tensor
    return {c: m for c, m in weights.items() if m}, problems


def adapter_type(weights: AdapterWeights) -> str:
    """'loha', 'lokr', 'dora', 'locon' (LoRA with k>1 convs) or 'lora'."""
    params = [p for modules in weights.values() for m in modules.values() for p in m.items()]
    names = {name for name, _ in params}
    if names & set(LOHA_PARAMS):
        return "loha"
    if names & set(LOKR_PARAMS):
        return "lokr"
    if names & {"dora_scale", "lora_magnitude_vector"}:
        return "dora"
    if any(name == "lora_A" and t.ndim == 4 and t.shape[-1] * t.shape[-2] > 1 for name, t in params):
        return "locon"
    return "lora"
