"""Adapter file formats: community (kohya / A1111 / ComfyUI) and diffusers files, LyCORIS, metadata, hashes.

Public API:
- `save_adapter(path, components, family, unet_config=..., ...) -> CoverageReport`
- `community_metadata(info) -> dict[str, str]`
- `load_adapter_file(path, allow_pickle=False) -> AdapterFile`
- `apply_adapter_file(pipe, path, adapter_name, family=None, allow_pickle=False) -> ApplyReport`
- `convert_file(src, dst, to, family=None, *, unet_config=None, allow_pickle=False)` (community <-> diffusers,
  lossless: converting back gives the same bytes)
- `summarize_file(path, allow_pickle=False) -> dict` (what `sd-lora inspect` prints)
- pure name mapping: `module_to_community`, `community_to_module`, `diffusers_to_sgm`, `sgm_to_diffusers`

SD3 / SD3.5 and FLUX.1 (the families whose `community_naming` is "original"): the denoiser component is
"transformer" and `unet_config` is the transformer's config; names, exact q/k/v fusing and the foreign layouts read are in `transformer_files`.
"""

from sd_lora.formats.community import AdapterWeights, from_community, to_community
from sd_lora.formats.convert import convert_file
from sd_lora.formats.diffusers_format import from_diffusers, to_diffusers
from sd_lora.formats.export import CoverageReport, save_adapter
from sd_lora.formats.imports import AdapterFile, ApplyReport, apply_adapter_file, load_adapter_file
from sd_lora.formats.metadata import community_metadata
from sd_lora.formats.names import (
    TEXT_ENCODER_TARGETS,
    UNET_ATTENTION_TARGETS,
    UNET_CONV_TARGETS,
    community_to_module,
    module_to_community,
)
from sd_lora.formats.sdxl_names import diffusers_to_sgm, sgm_to_diffusers
from sd_lora.formats.summary import summarize_file

__all__ = [
    "AdapterFile",
    "AdapterWeights",
    "ApplyReport",
    "CoverageReport",
    "TEXT_ENCODER_TARGETS",
    "UNET_ATTENTION_TARGETS",
    "UNET_CONV_TARGETS",
    "apply_adapter_file",
    "community_metadata",
    "community_to_module",
    "convert_file",
    "diffusers_to_sgm",
    "from_community",
    "from_diffusers",
    "load_adapter_file",
    "module_to_community",
    "save_adapter",
    "sgm_to_diffusers",
    "summarize_file",
    "to_community",
    "to_diffusers",
]
