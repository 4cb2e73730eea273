"""Community files of the transformer families (SD3 / SD3.5, FLUX.1) <-> the neutral adapter layout.

Export (`to_community`) writes what kohya's `lora_sd3.py` / `lora_flux.py` write and ComfyUI, Forge and
AUTOMATIC1111 load: the transformer under `lora_unet_` with the original checkpoint's module names, q/k/v (and
FLUX's linear1) fused exactly (`fused.fuse`), text encoders under `lora_te1_` / `lora_te2_` / `lora_te3_`.
LoHa and LoKr products cannot be fused, and DoRA on a fused weight needs the base weights to fill untrained
blocks, so files holding those write the transformer with SimpleTuner's `lycoris_` + diffusers-path names,
which ComfyUI maps onto the slices of the fused weights (comfy/lora.py, `model_lora_keys_unet`).

Import (`from_community`) reads every layout ComfyUI accepts for these models and splits fused modules
exactly (`fused.split`): kohya `lora_unet_<original>`, `diffusion_model.<original>` (ai-toolkit / ComfyUI;
FLUX `linear1_qkv` = the q/k/v rows of linear1), XLabs `double_blocks.N.processor.qkv_lora1...`, OneTrainer
`lora_transformer_<diffusers path>`, SimpleTuner `lycoris_<diffusers path>`, peft `base_model.model.<path>`.
diffusers' own `transformer.` files are read by `diffusers_format`.
"""

from __future__ import annotations

import torch

from sd_lora.errors import SdLoraError
from sd_lora.formats import fused
from sd_lora.formats.names import canonical_text_encoder_path, dotted
from sd_lora.models.families import FILE_FAMILIES

__all__ = ["TRANSFORMER_FAMILIES", "keys_module", "is_transformer_family", "to_community", "from_community",
           "FOREIGN_PREFIXES", "LYCORIS_PREFIX", "full_size_config", "layout", "variant",
           "module_name", "expected_modules", "checkpoint_layout", "original_targets", "swapped"]

# the families whose community files name the original checkpoint's (fused) modules
TRANSFORMER_FAMILIES = tuple(name for name, f in FILE_FAMILIES.items() if f.community_naming == "original")
LYCORIS_PREFIX = "lycoris_"
_FLAT_DIFFUSERS = (LYCORIS_PREFIX, "lora_transformer_")
_DOTTED_DIFFUSERS = ("base_model.model.",)
_DOTTED_ORIGINAL = ("diffusion_model.",)
_BARE_ORIGINAL = ("double_blocks.", "single_blocks.", "joint_blocks.")
FOREIGN_PREFIXES = _FLAT_DIFFUSERS + _DOTTED_DIFFUSERS + _DOTTED_ORIGINAL + _BARE_ORIGINAL
_XLABS = {"processor.qkv_lora1": ("img_attn.qkv", None), "processor.proj_lora1": ("img_attn.proj", None),
          "processor.qkv_lora2": ("txt_attn.qkv", None), "processor.proj_lora2": ("txt_attn.proj", None),
          "processor.qkv_lora": ("linear1", 3), "processor.proj_lora": ("linear2", None)}
_TO_SUFFIX = {"lora_A": "lora_down.weight", "lora_B": "lora_up.weight"}


def is_transformer_family(family: str | None) -> bool:
    return family in TRANSFORMER_FAMILIES


def keys_module(family: str):
    """The family's module mapping diffusers paths <-> its original checkpoint (`sd3_keys`, `flux_keys`)."""
    keys = FILE_FAMILIES[family].keys if family in FILE_FAMILIES else None
    if keys is None:
        raise KeyError(f"{family!r} is not a transformer family")
    return keys


def full_size_config(family: str, names: list[str]) -> dict:
    """The released model a file's names fit, for converting without a model (`full_size_for` of the family's
    keys module)."""
    return keys_module(family).full_size_for(names)


_LAYOUT_FIELDS = ("num_layers", "num_single_layers", "num_attention_heads", "attention_head_dim",
                  "dual_attention_layers", "qk_norm", "guidance_embeds", "caption_projection_dim")


def layout(config) -> dict:
    """The config fields a transformer family's file names depend on (stored in the files sd-lora writes)."""
    from sd_lora.models.families.sd3_keys import config_value

    out = {k: config_value(config, k) for k in _LAYOUT_FIELDS}
    return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items() if v is not None}


def variant(family: str, config) -> str:
    return keys_module(family).variant(config)


def module_name(family: str, config, component: str, path: str) -> str:
    """How a community file names the module (for reports): the original module, plus the diffusers module's
    last name when it is one row block of a fused weight (`lora_unet_double_blocks_0_img_attn_qkv:to_k`)."""
    km = keys_module(family)
    if component != "transformer":
        return _te_name(km.TEXT_ENCODER_PREFIXES.get(component, component + "_"), path)
    for name, group in km.groups(config).items():
        if path in group.parts:
            flat = km.DENOISER_PREFIX + name.replace(".", "_")
            return flat if group.sizes is None else f"{flat}:{path.rsplit('.', 1)[-1]}"
    return LYCORIS_PREFIX + path.replace(".", "_")


def expected_modules(weights, family: str, config) -> dict[str, int]:
    """Modules per component a saved file must give back: a fused module cannot show which of its blocks a LoRA
    with an all-zero up (e.g. untrained, step 0) belongs to, and such a LoRA changes nothing, so it is not
    counted."""
    fused_parts = {p for g in keys_module(family).groups(config).values() if g.sizes for p in g.parts}
    out = {}
    for component, modules in weights.items():
        fusing = component == "transformer" and _fusable(modules)
        out[component] = sum(1 for path, p in modules.items() if not fusing or path not in fused_parts
                             or bool((p["lora_B"] != 0).any()))
    return out


_CHECKPOINT_PREFIXES = ("model.diffusion_model.", "diffusion_model.", "")


def checkpoint_layout(shapes: dict[str, tuple[int, ...]]) -> tuple[str, str, dict] | None:
    """(family, key prefix, config) of an original-layout SD3 / FLUX transformer checkpoint, from its names and
    shapes (each family's `keys.checkpoint_config`); None for anything else. The config holds what the module
    names and row blocks depend on."""
    for prefix in _CHECKPOINT_PREFIXES:
        names = {k[len(prefix):]: s for k, s in shapes.items() if k.startswith(prefix)}
        for family in TRANSFORMER_FAMILIES:
            config = keys_module(family).checkpoint_config(names)
            if config is not None:
                return family, prefix, config
    return None


def original_targets(modules, family: str, config, prefix: str):
    """({(component, path): (checkpoint key, (first row, end row) or None, swap halves)}, problems) of the
    modules of an adapter in an original-layout transformer checkpoint."""
    where = {part: (name, i, g) for name, g in keys_module(family).groups(config).items()
             for i, part in enumerate(g.parts)}
    out, problems = {}, []
    for component, path in modules:
        if component != "transformer" or path not in where:
            problems.append(f"{component}.{path}: a transformer-only checkpoint has no such weight")
            continue
        name, i, group = where[path]
        rows = None if group.sizes is None else (sum(group.sizes[:i]), sum(group.sizes[:i + 1]))
        out[(component, path)] = (prefix + name + ".weight", rows, group.swap_halves)
    return out, problems


def swapped(params: dict[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    """A LoRA / DoRA module with its two output halves exchanged (the layouts order shift and scale apart)."""
    if set(params) - fused.LORA_ONLY:
        raise SdLoraError(f"{where}: a {'/'.join(sorted(set(params) - fused.LORA_ONLY))} update cannot have its "
                          "shift and scale halves exchanged exactly; sd-lora cannot bake it into this layout.")
    return _swapped(params)


def _te_name(prefix: str, path: str) -> str:
    return prefix + canonical_text_encoder_path(path).replace(".", "_")


def _param_keys(name: str, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"{name}.{_TO_SUFFIX.get(p, p)}": t for p, t in params.items()}


def _swapped(params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = dict(params)
    out["lora_B"] = fused.swap_halves(params["lora_B"])
    if "dora_scale" in params:
        out["dora_scale"] = fused.swap_halves(params["dora_scale"])
    return out


def _fusable(modules: dict[str, dict[str, torch.Tensor]]) -> bool:
    return all(set(p) <= fused.LORA_ONLY - {"dora_scale"} for p in modules.values())


def _denoiser_to_community(modules, km, config) -> dict[str, torch.Tensor]:
    if not _fusable(modules):
        return {k: v for path, params in modules.items()
                for k, v in _param_keys(LYCORIS_PREFIX + path.replace(".", "_"), params).items()}
    where = {part: (name, i) for name, g in km.groups(config).items() for i, part in enumerate(g.parts)}
    unknown = sorted(set(modules) - set(where))
    if unknown:
        raise SdLoraError(f"transformer.{unknown[0]}: no module of the original checkpoint layout holds it, so a "
                          "community file cannot name it; save with format = diffusers.")
    out: dict[str, torch.Tensor] = {}
    for name, group in km.groups(config).items():
        parts = [modules.get(p) for p in group.parts]
        if all(p is None for p in parts):
            continue
        params = parts[0] if group.sizes is None else fused.fuse(parts, group.sizes)
        out.update(_param_keys(km.DENOISER_PREFIX + name.replace(".", "_"), _swapped(params) if group.swap_halves
                               else params))
    return out


def to_community(weights, family: str, config) -> dict[str, torch.Tensor]:
    """Neutral layout (diffusers module paths) -> community state dict, fused as the original checkpoint is."""
    km = keys_module(family)
    out: dict[str, torch.Tensor] = {}
    for component, modules in weights.items():
        if component == "transformer":
            out.update(_denoiser_to_community(modules, km, config))
            continue
        prefix = km.TEXT_ENCODER_PREFIXES.get(component)
        if prefix is None:
            raise SdLoraError(f"{component}: {family} files have no community prefix for it")
        for path, params in modules.items():
            out.update(_param_keys(_te_name(prefix, path), params))
    return out


class _Names:
    """Lookups from every spelling a file may use to (group name, parts kept) or a diffusers path."""

    def __init__(self, km, config):
        self.groups = km.groups(config)
        self.flat_original = {n.replace(".", "_"): n for n in self.groups}
        self.paths = {p for g in self.groups.values() for p in g.parts}
        self.flat_paths = {p.replace(".", "_"): p for p in self.paths}
        self.te = sorted(km.IMPORT_TEXT_ENCODER_PREFIXES.items(), key=lambda kv: -len(kv[1]))

    def resolve(self, name: str):
        """('group', original name, parts kept or None) | ('module', component, path) | None."""
        for prefix in _DOTTED_ORIGINAL + ("lora_unet_",) + _BARE_ORIGINAL:
            if not name.startswith(prefix):
                continue
            rest = name[len(prefix):] if not prefix.endswith("blocks.") else name
            if prefix == "lora_unet_":
                rest = self.flat_original.get(rest, rest)
            return self._original(rest)
        for prefix in _FLAT_DIFFUSERS:
            if name.startswith(prefix):
                path = self.flat_paths.get(name[len(prefix):])
                return ("module", "transformer", path) if path else None
        for prefix in _DOTTED_DIFFUSERS:
            if name.startswith(prefix):
                return "module", "transformer", name[len(prefix):]
        for component, prefix in self.te:
            if name.startswith(prefix):
                return "module", component.removesuffix("_alt"), canonical_text_encoder_path(dotted(name[len(prefix):]))
        return None

    def _original(self, rest: str):
        keep = None
        if rest.endswith(".linear1_qkv"):
            rest, keep = rest[: -len("_qkv")], 3
        for marker, (target, n) in _XLABS.items():
            if rest.endswith("." + marker):
                rest, keep = rest[: -len(marker)] + target, n
        return ("group", rest, keep) if rest in self.groups else None


def _split_group(group, params, keep, name: str) -> list[tuple[str, dict]]:
    if set(params) - fused.LORA_ONLY:
        if group.sizes is None:
            return [(group.parts[0], params)]
        raise SdLoraError(f"{name}: a {'/'.join(sorted(set(params) - fused.LORA_ONLY))} module on a fused weight "
                          "cannot be split exactly onto diffusers' separate modules; sd-lora cannot apply it "
                          "(ComfyUI can).")
    if "lora_A" not in params or "lora_B" not in params:
        raise SdLoraError(f"{name}: needs both down and up weights")
    if group.swap_halves:
        params = _swapped(params)
    if group.sizes is None:
        return [(group.parts[0], params)]
    n = keep or len(group.parts)
    pieces = fused.split(params, group.sizes[:n])
    return [(path, p) for path, p in zip(group.parts[:n], pieces) if p is not None]


def _magnitude(params: dict) -> dict:
    magnitude = params.pop("lora_magnitude_vector", None)
    if magnitude is not None and "lora_B" in params:
        out = params["lora_B"].shape[0]
        params["dora_scale"] = magnitude.reshape(out, *[1] * (params["lora_B"].ndim - 1))
    return params


def from_community(state_dict, family: str, config):
    """Community / foreign state dict -> (neutral layout, problems naming each key that did not map)."""
    from sd_lora.formats.community import split_community_key

    names = _Names(keys_module(family), config)
    grouped: dict[str, dict[str, dict]] = {}  # original name -> params, for fused groups
    keeps: dict[str, int | None] = {}
    modules: dict[tuple[str, str], dict] = {}
    problems: list[str] = []
    for key, tensor in state_dict.items():
        split = split_community_key(key)
        target = names.resolve(split[0]) if split else None
        if target is None:
            problems.append(f"{key}: " + ("unknown tensor kind" if not split else
                                          f"no {family} module is called {split[0]!r}"))
        elif target[0] == "group":
            grouped.setdefault(target[1], {})[split[1]] = tensor
            keeps[target[1]] = target[2]
        else:
            modules.setdefault(target[1:], {})[split[1]] = tensor
    weights: dict[str, dict[str, dict]] = {}
    for (component, path), params in modules.items():
        weights.setdefault(component, {})[path] = _magnitude(params)
    for name, params in grouped.items():
        try:
            pieces = _split_group(names.groups[name], _magnitude(params), keeps[name], name)
        except SdLoraError as e:
            problems.append(str(e))
            continue
        for path, piece in pieces:
            if path in weights.get("transformer", {}):
                problems.append(f"transformer.{path}: given twice (as {name} and under its own name)")
            weights.setdefault("transformer", {})[path] = piece
    return weights, problems
