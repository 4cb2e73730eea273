"""peft adapter directories (`adapter_config.json` + `adapter_model.safetensors`) -> neutral layout.

Either one directory (one model: the UNet, or a text encoder when its keys say so) or a directory with
`unet/`, `text_encoder/`, `text_encoder_2/` sub-directories, as diffusers' training scripts save them.
The scale of each module comes from the saved config (rank/alpha patterns, rsLoRA), as peft resolves it.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import torch

from sd_lora.errors import SdLoraError
from sd_lora.formats.community import LOHA_PARAMS, LOKR_PARAMS, AdapterWeights
from sd_lora.formats.lycoris import lokr_export_params
from sd_lora.formats.names import canonical_text_encoder_path
from sd_lora.formats.safetensors_io import read_tensor_file

__all__ = ["is_peft_dir", "read_peft_dir"]

_CONFIG, _WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
_COMPONENTS = ("unet", "text_encoder", "text_encoder_2")


def is_peft_dir(path: Path) -> bool:
    return path.is_dir() and ((path / _CONFIG).is_file() or any((path / c / _CONFIG).is_file() for c in _COMPONENTS))


def _pattern(patterns: dict, path: str, default):
    for key, value in (patterns or {}).items():
        if re.match(rf"(.*\.)?({key})$", path):
            return value
    return default


def _group(tensors: dict[str, torch.Tensor], where: Path) -> dict[str, dict[str, torch.Tensor]]:
    modules: dict[str, dict[str, torch.Tensor]] = {}
    params = ("lora_A.weight", "lora_B.weight", "lora_magnitude_vector", "lora_magnitude_vector.weight",
              *LOHA_PARAMS, *LOKR_PARAMS)
    for key, tensor in tensors.items():
        key = key.removeprefix("base_model.model.")
        param = next((p for p in params if key.endswith("." + p)), None)
        if param is None:
            raise SdLoraError(f"{where}: {key} is not a LoRA / LoHa / LoKr tensor")
        name = param.removesuffix(".weight")
        modules.setdefault(key[: -len(param) - 1], {})[name] = tensor
    return modules


def _with_alpha(path: str, params: dict[str, torch.Tensor], config: dict) -> dict[str, torch.Tensor]:
    rank = int(_pattern(config.get("rank_pattern"), path, config.get("r", 8)))
    if "lora_A" in params:
        alpha = float(_pattern(config.get("alpha_pattern"), path, config.get("lora_alpha", rank)))
        alpha *= math.sqrt(rank) if config.get("use_rslora") else 1.0
        out = {"lora_A": params["lora_A"], "lora_B": params["lora_B"], "alpha": torch.tensor(alpha)}
        if "lora_magnitude_vector" in params:
            n = params["lora_B"].shape[0]
            out["dora_scale"] = params["lora_magnitude_vector"].reshape(n, *[1] * (params["lora_B"].ndim - 1))
        return out
    alpha = float(_pattern(config.get("alpha_pattern"), path, config.get("alpha", rank)))
    if any(k.startswith("lokr_") for k in params):
        return lokr_export_params(params, alpha, rank)
    return {**params, "alpha": torch.tensor(alpha)}


def _read_one(directory: Path, component: str | None) -> tuple[str, dict[str, dict[str, torch.Tensor]]]:
    try:
        config = json.loads((directory / _CONFIG).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise SdLoraError(f"{directory / _CONFIG}: cannot read the adapter config: {e}") from None
    tensors, _ = read_tensor_file(directory / _WEIGHTS)
    modules = _group(tensors, directory / _WEIGHTS)
    if component is None:
        is_text = all(p.startswith(("text_model.", "encoder.layers.", "text_projection")) for p in modules)
        component = "text_encoder" if is_text else "unet"
    out = {}
    for path, params in modules.items():
        key = canonical_text_encoder_path(path) if component != "unet" else path
        out[key] = _with_alpha(path, params, config)
    return component, out


def read_peft_dir(path: Path) -> tuple[AdapterWeights, dict[str, str]]:
    """(neutral layout, metadata) of a peft adapter directory."""
    weights: AdapterWeights = {}
    if (path / _CONFIG).is_file():
        component, modules = _read_one(path, None)
        weights[component] = modules
    for component in _COMPONENTS:
        if (path / component / _CONFIG).is_file():
            weights[component] = _read_one(path / component, component)[1]
    return weights, {}
