"""diffusers' LoRA file format <-> the neutral layout.

What `save_lora_weights` writes and `load_lora_weights` reads: peft-named keys under a component
prefix (`unet.<path>.lora_A.weight`, `text_encoder.<path>.lora_B.weight`,
`<path>.lora_magnitude_vector` for DoRA) and, in the safetensors metadata, `lora_adapter_metadata`:
JSON of each component's LoraConfig kwargs with the component as key prefix (`unet.r`,
`unet.lora_alpha`, `unet.alpha_pattern`, ...). There is no alpha tensor: scales live in that config.

Patterns written here name whole module paths without the `text_model.` level, so they match the
text encoder whether or not the installed transformers keeps that level (peft matches patterns as
path suffixes).
"""

from __future__ import annotations

import collections
import json
import re

import torch

from sd_lora.errors import SdLoraError
from sd_lora.formats.community import AdapterWeights
from sd_lora.formats.names import canonical_text_encoder_path
from sd_lora.formats.safetensors_io import metadata_json

__all__ = ["METADATA_KEY", "COMPONENTS", "to_diffusers", "from_diffusers", "is_diffusers_key"]

METADATA_KEY = "lora_adapter_metadata"
COMPONENTS = ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3")
_SUFFIXES = {"lora_A.weight": "lora_A", "lora_B.weight": "lora_B",
             "lora_magnitude_vector": "lora_magnitude_vector",
             "lora_magnitude_vector.weight": "lora_magnitude_vector"}


def is_diffusers_key(key: str) -> bool:
    return key.split(".", 1)[0] in COMPONENTS and ".lora_" in key


def _pattern_name(path: str) -> str:
    return path[len("text_model."):] if path.startswith("text_model.") else path


def _magnitude(dora_scale: torch.Tensor, lora_B: torch.Tensor, where: str) -> torch.Tensor:
    out = lora_B.shape[0]
    if dora_scale.shape[0] != out or dora_scale[0].numel() != 1:
        raise SdLoraError(f"{where}: dora_scale {list(dora_scale.shape)} normalises over the input axis; peft and "
                          "diffusers normalise per output channel, so it cannot be written in diffusers format.")
    return dora_scale.reshape(out) if lora_B.ndim == 2 else dora_scale.reshape(1, out, 1, 1)


def _component_config(modules: dict[str, dict[str, torch.Tensor]]) -> dict:
    ranks = {p: int(m["lora_A"].shape[0]) for p, m in modules.items()}
    alphas = {p: float(m["alpha"].item()) if "alpha" in m else float(ranks[p]) for p, m in modules.items()}
    r = collections.Counter(ranks.values()).most_common(1)[0][0]
    alpha = collections.Counter(alphas.values()).most_common(1)[0][0]
    return {
        "r": r,
        "lora_alpha": alpha,
        "rank_pattern": {_pattern_name(p): v for p, v in ranks.items() if v != r},
        "alpha_pattern": {_pattern_name(p): v for p, v in alphas.items() if v != alpha},
        "target_modules": sorted(_pattern_name(p) for p in modules),
        "use_dora": any("dora_scale" in m for m in modules.values()),
        "lora_bias": False,
    }


def to_diffusers(weights: AdapterWeights) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Neutral LoRA/DoRA layout -> (diffusers state dict, safetensors metadata)."""
    state: dict[str, torch.Tensor] = {}
    config: dict = {}
    for component, modules in weights.items():
        for path, params in modules.items():
            extra = set(params) - {"lora_A", "lora_B", "alpha", "dora_scale"}
            if extra:
                raise SdLoraError(f"{component}.{path}: diffusers format holds LoRA / DoRA only, not {sorted(extra)}; "
                                  "save LoHa / LoKr adapters in community format.")
            state[f"{component}.{path}.lora_A.weight"] = params["lora_A"]
            state[f"{component}.{path}.lora_B.weight"] = params["lora_B"]
            if "dora_scale" in params:
                state[f"{component}.{path}.lora_magnitude_vector"] = _magnitude(
                    params["dora_scale"], params["lora_B"], f"{component}.{path}")
        if modules:
            config.update({f"{component}.{k}": v for k, v in _component_config(modules).items()})
    return state, {"format": "pt", METADATA_KEY: json.dumps(config, indent=2, sort_keys=True)}


def _lookup(pattern: dict, path: str, default):
    # peft's own matching rule (`get_pattern_key`), tried on the path with and without `text_model.`
    for candidate in (path, _pattern_name(path)):
        for key, value in pattern.items():
            if re.match(rf"(.*\.)?({key})$", candidate):
                return value
    return default


def _alpha(config: dict, path: str, rank: int, dtype: torch.dtype) -> torch.Tensor:
    if not config:
        return torch.tensor(float(rank), dtype=dtype)  # no config: diffusers' convention is scale 1
    alpha = float(_lookup(config.get("alpha_pattern") or {}, path, config.get("lora_alpha", rank)))
    if config.get("use_rslora"):
        alpha = alpha * rank ** 0.5  # community scale alpha/r must equal peft's alpha/sqrt(r)
    return torch.tensor(alpha, dtype=dtype)


def _parse_config(metadata: dict[str, str]) -> dict[str, dict]:
    raw = metadata.get(METADATA_KEY)
    if not raw:
        return {}
    flat = metadata_json(raw, f"metadata {METADATA_KEY!r}")
    out: dict[str, dict] = collections.defaultdict(dict)
    for key, value in flat.items():
        component, _, field = key.partition(".")
        out[component][field] = value
    return dict(out)


def from_diffusers(state_dict: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[AdapterWeights, list[str]]:
    """diffusers state dict (+ metadata) -> (neutral layout, problems naming keys that did not map)."""
    weights: AdapterWeights = {}
    problems: list[str] = []
    configs = _parse_config(metadata or {})
    for key, tensor in state_dict.items():
        component, _, rest = key.partition(".")
        match = next(((rest[: -len(s) - 1], p) for s, p in _SUFFIXES.items() if rest.endswith("." + s)), None)
        if component not in COMPONENTS or match is None:
            problems.append(f"{key}: not a diffusers LoRA key (<component>.<module>.lora_A/lora_B.weight)")
            continue
        path, param = match
        if component.startswith("text_encoder"):
            path = canonical_text_encoder_path(path)
        weights.setdefault(component, {}).setdefault(path, {})[param] = tensor
    for component, modules in weights.items():
        for path, params in modules.items():
            if "lora_A" not in params or "lora_B" not in params:
                problems.append(f"{component}.{path}: needs both lora_A and lora_B")
                continue
            magnitude = params.pop("lora_magnitude_vector", None)
            if magnitude is not None:
                out = params["lora_B"].shape[0]
                params["dora_scale"] = magnitude.reshape(out, *[1] * (params["lora_B"].ndim - 1))
            params["alpha"] = _alpha(configs.get(component, {}), path,
                                     int(params["lora_A"].shape[0]), params["lora_A"].dtype)
    return weights, problems
