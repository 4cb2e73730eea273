"""Convert adapter files between the community and diffusers formats, losslessly.

Tensors are renamed, never cast or recomputed. What only one format can express travels in the other
file's metadata under `CONVERT_KEY`: the community alpha dtype and the modules without an alpha
(diffusers keeps scales in its LoraConfig JSON), so community -> diffusers -> community gives back the
same tensors and metadata. SDXL UNet names depend on the UNet's block layout: it is taken from the
caller, else from the file's `LAYOUT_KEY` metadata (sd-lora writes it), else the full-size SDXL UNet.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from sd_lora.errors import SdLoraError
from sd_lora.fileio import atomic_write_bytes
from sd_lora.formats import transformer_files
from sd_lora.formats.community import from_community, to_community
from sd_lora.formats.detect import detect_format, guess_family
from sd_lora.formats.diffusers_format import METADATA_KEY, from_diffusers, to_diffusers
from sd_lora.formats.metadata import HASH_KEYS, LAYOUT_KEY, serialize_with_hashes, unet_layout
from sd_lora.formats.names import module_to_community
from sd_lora.formats.safetensors_io import metadata_json, read_tensor_file
from sd_lora.models.families import file_family

__all__ = ["CONVERT_KEY", "TARGETS", "convert_state", "convert_file", "layout_config"]

CONVERT_KEY = "sd_lora.community"
TARGETS = ("community", "diffusers")


def layout_config(family: str, metadata: dict[str, str], unet_config=None, names=()):
    """Denoiser config used for name mapping: given > stored in the file > the family's full-size model (for
    SD3 / FLUX the released model the file's `names` fit)."""
    if unet_config is not None:
        return unet_config
    if metadata.get(LAYOUT_KEY):
        return metadata_json(metadata[LAYOUT_KEY], f"metadata {LAYOUT_KEY!r}")
    if transformer_files.is_transformer_family(family):
        return transformer_files.full_size_config(family, list(names))
    from sd_lora.models.families.unet_architectures import unet_config as full_size

    return unet_layout(full_size(family))


def _to_diffusers(tensors, metadata, family, unet_config):
    weights, problems = from_community(tensors, family, unet_config)
    if problems:
        raise SdLoraError(f"{len(problems)} key(s) do not map to {family} modules: {problems[:5]}")
    absent, dtypes = [], set()
    for component, modules in weights.items():
        for path, params in modules.items():
            if "alpha" in params:
                dtypes.add(str(params["alpha"].dtype).removeprefix("torch."))
            else:
                absent.append(module_to_community(component, path, family, unet_config))
                params["alpha"] = torch.tensor(float(params["lora_A"].shape[0]))
    out, extra = to_diffusers(weights)
    keep = {k: v for k, v in metadata.items() if k not in HASH_KEYS}
    note = {"alpha_dtype": dtypes.pop() if len(dtypes) == 1 else None, "no_alpha": sorted(absent),
            "had_format_key": "format" in metadata}
    return out, {**keep, **extra, CONVERT_KEY: json.dumps(note, sort_keys=True)}


def _to_community(tensors, metadata, family, unet_config):
    weights, problems = from_diffusers(tensors, metadata)
    if problems:
        raise SdLoraError(f"{len(problems)} key(s) are not diffusers LoRA keys: {problems[:5]}")
    note = metadata_json(metadata.get(CONVERT_KEY) or "{}", f"metadata {CONVERT_KEY!r}")
    dtype = getattr(torch, note["alpha_dtype"]) if note.get("alpha_dtype") else None
    out = to_community(weights, family, unet_config)
    for key in list(out):
        if key.endswith(".alpha"):
            if key[: -len(".alpha")] in set(note.get("no_alpha", ())):
                del out[key]
            elif dtype is not None:
                out[key] = out[key].to(dtype)
    drop = {METADATA_KEY, CONVERT_KEY, *HASH_KEYS} | (set() if note.get("had_format_key", True) else {"format"})
    return out, {k: v for k, v in metadata.items() if k not in drop}


def _convert_transformer(tensors, metadata, to, family, config):
    """SD3 / FLUX: fused community modules are split into diffusers' modules and fused again on the way back
    (exact in ΔW; not byte-identical when a file's up is not block diagonal)."""
    config = layout_config(family, metadata, config, names=list(tensors))
    keep = {k: v for k, v in metadata.items() if k not in HASH_KEYS}
    if to == "diffusers":
        weights, problems = from_community(tensors, family, config)
        if problems:
            raise SdLoraError(f"{len(problems)} key(s) do not map to {family} modules: {problems[:5]}")
        out, extra = to_diffusers(weights)
        return out, {**keep, **extra, LAYOUT_KEY: json.dumps(transformer_files.layout(config), sort_keys=True)}
    weights, problems = from_diffusers(tensors, metadata)
    if problems:
        raise SdLoraError(f"{len(problems)} key(s) are not diffusers LoRA keys: {problems[:5]}")
    return to_community(weights, family, config), {k: v for k, v in keep.items() if k != METADATA_KEY}


def convert_state(tensors: dict[str, torch.Tensor], metadata: dict[str, str], to: str, family: str,
                  unet_config=None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of a community or diffusers file rewritten in format `to`."""
    if to not in TARGETS:
        raise SdLoraError(f"unknown target format {to!r}; expected one of {TARGETS}")
    source = detect_format(tensors)
    if source == "unknown":
        raise SdLoraError("the tensors are neither all community (lora_unet_/lora_te*) nor all diffusers keys")
    if source == to:
        return dict(tensors), dict(metadata)
    if transformer_files.is_transformer_family(family):
        return _convert_transformer(tensors, metadata, to, family, unet_config)
    config = layout_config(family, metadata, unet_config)
    convert = _to_diffusers if to == "diffusers" else _to_community
    out, meta = convert(tensors, metadata, family, config)
    if file_family(family).community_naming == "sgm" and LAYOUT_KEY not in meta:  # names depend on the layout
        meta[LAYOUT_KEY] = json.dumps(unet_layout(config), sort_keys=True)
    return out, meta


def convert_file(src, dst, to: str, family: str | None = None, *, unet_config=None,
                 allow_pickle: bool = False) -> Path:
    """Rewrite adapter file `src` as `dst` in format `to` (tensors unchanged); returns `dst`."""
    src, dst = Path(src), Path(dst)
    tensors, metadata = read_tensor_file(src, allow_pickle=allow_pickle)
    if family is None:
        family, why = guess_family(tensors, metadata)
        if family is None:
            raise SdLoraError(f"{src}: cannot tell the model family ({why}); pass --family sd1|sd2|sdxl|sd3|flux.")
    try:
        out, meta = convert_state(tensors, metadata, to, family, unet_config)
    except SdLoraError as e:
        raise SdLoraError(f"{src}: cannot convert to {to} as {family}: {e}") from None
    if any(k in metadata for k in HASH_KEYS) or to == "community":
        blob = serialize_with_hashes(out, meta)
    else:
        from sd_lora.formats.safetensors_io import serialize

        blob = serialize(out, meta)
    return atomic_write_bytes(dst, blob)
