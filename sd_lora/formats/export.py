"""Save a trained adapter as a community or diffusers safetensors file, and prove it reads back whole.

The file is serialized once with placeholder hashes to find the tensor-data region (safetensors' layout
does not depend on the metadata values, only on their length), hashed, serialized again with the real
hashes, and written atomically. Before the rename, the written bytes are read back through sd-lora's
importer and validated against the models: every trained module must be applied, or saving fails.
"""

from __future__ import annotations

import collections
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from sd_lora.errors import SdLoraError
from sd_lora.fileio import atomic_path
from sd_lora.formats import transformer_files
from sd_lora.formats.community import DORA_A1111_NOTE, AdapterWeights, adapter_type, to_community
from sd_lora.formats.diffusers_format import to_diffusers
from sd_lora.formats.imports import load_adapter_file, plan_modules
from sd_lora.formats.metadata import LAYOUT_KEY, minimum_metadata, serialize_with_hashes, unet_layout
from sd_lora.formats.peft_bridge import collect_adapter_weights
from sd_lora.models.families import file_family

__all__ = ["CoverageReport", "save_adapter", "weights_facts", "FORMATS"]

FORMATS = ("community", "diffusers")
_FACT_KEYS = ("ss_network_module", "ss_network_dim", "ss_network_alpha")
_MODEL_KEYS = ("modelspec.architecture", "modelspec.implementation", "ss_base_model_version")


@dataclass
class CoverageReport:
    """Modules trained vs modules the saved file applies, per component."""

    path: Path
    format: str
    adapter_type: str
    trained: dict[str, int]
    applied: dict[str, int]

    @property
    def complete(self) -> bool:
        return self.trained == self.applied

    def summary(self) -> str:
        parts = ", ".join(f"{c} {self.applied.get(c, 0)}/{n}" for c, n in self.trained.items())
        return f"saved {self.path.name} ({self.format}, {self.adapter_type}): {parts} modules applied"


def _cast(weights: AdapterWeights, dtype: torch.dtype) -> AdapterWeights:
    return {c: {p: {k: v.detach().to("cpu", dtype).contiguous() for k, v in params.items()}
                for p, params in modules.items()} for c, modules in weights.items()}


def _rank(params: dict[str, torch.Tensor]) -> int:
    for key in ("lora_A", "hada_w1_b", "lokr_w2_b", "lokr_w1_b"):
        if key in params:
            return int(params[key].shape[0])
    return 0


def weights_facts(weights: AdapterWeights) -> dict:
    """network_dim / network_alpha (most common), adapter type and LoCon conv dims, for the metadata."""
    linear, conv = collections.Counter(), collections.Counter()
    for modules in weights.values():
        for params in modules.values():
            first = next(iter(params.values()))
            spatial = first.ndim == 4 and first.shape[-1] * first.shape[-2] > 1
            (conv if spatial else linear)[(_rank(params), float(params["alpha"].item()))] += 1
    (dim, alpha), _ = (linear or conv).most_common(1)[0]
    kind = adapter_type(weights)
    args = {}
    if conv:
        (conv_dim, conv_alpha), _ = conv.most_common(1)[0]
        args = {"conv_dim": str(conv_dim), "conv_alpha": str(conv_alpha)}
    return {"adapter_type": kind, "network_dim": dim, "network_alpha": alpha, "network_args": args}



def _metadata(weights: AdapterWeights, family: str, given: dict[str, str] | None,
              variant: str | None = None) -> dict[str, str]:
    facts = weights_facts(weights)
    derived = minimum_metadata({"family": family, "model_variant": variant, **facts})
    # values measured on the weights (and, for SD3 / FLUX, read from the transformer's config) win over what the
    # caller passed for them
    facts_keys = _FACT_KEYS + (_MODEL_KEYS if variant else ())
    meta = {**derived, **(given or {}), **{k: derived[k] for k in facts_keys}}
    try:
        given_args = json.loads((given or {}).get("ss_network_args") or "{}")
    except json.JSONDecodeError:
        given_args = {}
    meta["ss_network_args"] = json.dumps({**given_args, **json.loads(derived["ss_network_args"])}, sort_keys=True)
    return meta


def _coverage(tmp: Path, path: Path, components, family: str, unet_config, weights: AdapterWeights,
              fmt: str) -> CoverageReport:
    adapter = load_adapter_file(tmp)
    try:
        plan = plan_modules(adapter, components, family, unet_config)
    except SdLoraError as e:
        raise SdLoraError(f"{path}: the saved file does not read back completely, so it was not written: {e}") from e
    if transformer_files.is_transformer_family(family):
        trained = transformer_files.expected_modules(weights, family, unet_config)
    else:
        trained = {c: len(m) for c, m in weights.items()}
    report = CoverageReport(path, fmt, adapter.adapter_type, trained, {c: len(plan.get(c, {})) for c in trained})
    if not report.complete:
        raise SdLoraError(f"{path}: {report.summary()} - modules would be lost, so the file was not written.")
    return report


def save_adapter(path, components: dict[str, torch.nn.Module], family: str, *, unet_config: dict,
                 adapter_name: str = "default", save_precision: torch.dtype = torch.float16,
                 format: str = "community", metadata: dict[str, str] | None = None) -> CoverageReport:
    """Write adapter `adapter_name` of `components` to `path`; returns the coverage report.

    `components`: "unet", "text_encoder" (+ "text_encoder_2" for SDXL), each with peft adapters injected; for
    SD3 "transformer", "text_encoder", "text_encoder_2", "text_encoder_3" (CLIP-L, CLIP-G, T5) and for FLUX
    "transformer", "text_encoder", "text_encoder_2" (CLIP-L, T5), with `unet_config` the transformer's config.
    Tensors (alpha too) are cast to `save_precision`. `metadata` (string values, e.g. from
    `community_metadata`) is merged over the minimum set; dim / alpha / module always come from the weights.
    """
    if format not in FORMATS:
        raise SdLoraError(f"unknown adapter format {format!r}; expected one of {FORMATS}")
    path = Path(path)
    weights = _cast(collect_adapter_weights(components, adapter_name), save_precision)
    if transformer_files.is_transformer_family(family):
        meta = _metadata(weights, family, metadata, transformer_files.variant(family, unet_config))
        meta[LAYOUT_KEY] = json.dumps(transformer_files.layout(unet_config), sort_keys=True)
    else:
        meta = _metadata(weights, family, metadata)
    if file_family(family).community_naming == "sgm":  # its names depend on the UNet layout
        meta[LAYOUT_KEY] = json.dumps(unet_layout(unet_config), sort_keys=True)
    if format == "community":
        tensors = to_community(weights, family, unet_config)
    else:
        tensors, diffusers_meta = to_diffusers(weights)
        meta.update(diffusers_meta)
    blob = serialize_with_hashes(tensors, meta)
    with atomic_path(path) as tmp:
        tmp.write_bytes(blob)
        report = _coverage(tmp, path, components, family, unet_config, weights, format)
    if format == "community" and report.adapter_type == "dora":
        print(f"note: {path.name}: {DORA_A1111_NOTE}")
    return report
