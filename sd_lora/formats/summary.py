"""What an adapter file holds, as a plain dict: family, format, type, ranks/alphas, modules, metadata, hashes.

Works from the tensors alone (no model): modules are grouped by their key prefix, ranks read from the
down / factor tensors, alphas from the `alpha` tensors (diffusers files: their LoraConfig metadata).
"""

from __future__ import annotations

import collections
import json
from pathlib import Path

from sd_lora.formats.community import DORA_A1111_NOTE, split_community_key
from sd_lora.formats.diffusers_format import from_diffusers
from sd_lora.formats.imports import load_adapter_file
from sd_lora.formats.metadata import model_hash, legacy_hash
from sd_lora.models.families import file_family

__all__ = ["summarize_file", "format_summary", "dumps"]

_COMPONENT_OF_PREFIX = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder",
                        "lora_te2_": "text_encoder_2", "lora_te3_": "t5"}
_RANK_KEYS = ("lora_A", "hada_w1_b", "lokr_w2_b", "lokr_w1_b")


def _modules(adapter) -> dict[str, dict[str, dict]]:
    """{component: {module name: params}} without mapping names to a model."""
    out: dict[str, dict[str, dict]] = collections.defaultdict(dict)
    if adapter.peft_weights is not None or adapter.format == "diffusers":
        weights = adapter.peft_weights or from_diffusers(adapter.tensors, adapter.metadata)[0]
        for component, modules in weights.items():
            out[component].update(modules)
        return dict(out)
    for key, tensor in adapter.tensors.items():
        split = split_community_key(key)
        if split is None:
            continue
        name, param = split
        prefix = next((p for p in sorted(_COMPONENT_OF_PREFIX, key=len, reverse=True) if name.startswith(p)), None)
        component = _COMPONENT_OF_PREFIX.get(prefix, "transformer")  # the SD3 / FLUX layouts ComfyUI reads
        if component == "unet" and adapter.family:
            component = file_family(adapter.family).denoiser
        out[component].setdefault(name, {})[param] = tensor
    return dict(out)


def _rank_alpha(params: dict) -> tuple[int | None, float | None]:
    rank = next((int(params[k].shape[0]) for k in _RANK_KEYS if k in params), None)
    alpha = float(params["alpha"].item()) if "alpha" in params else None
    return rank, alpha


def _file_hashes(path: Path) -> dict[str, str]:
    if not path.is_file():
        return {}
    blob = path.read_bytes()
    if len(blob) < 8:
        return {}
    return {"sshs_model_hash": model_hash(blob), "sshs_legacy_hash": legacy_hash(blob),
            "autov3": model_hash(blob)[:12]}


def summarize_file(path, allow_pickle: bool = False) -> dict:
    """JSON-ready description of the adapter file at `path` (raises SdLoraError on unreadable files)."""
    adapter = load_adapter_file(path, allow_pickle=allow_pickle)
    modules = _modules(adapter)
    per_module = {f"{c}:{name}": _rank_alpha(p) for c, ms in modules.items() for name, p in ms.items()}
    pairs = collections.Counter(per_module.values())
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in adapter.tensors.values()})
    summary = {
        "path": str(adapter.path),
        "format": adapter.format,
        "adapter_type": adapter.adapter_type,
        "family": adapter.family,
        "family_reason": adapter.family_reason,
        "modules": {c: len(ms) for c, ms in modules.items()},
        "tensors": len(adapter.tensors),
        "dtypes": dtypes,
        "rank_alpha": [{"rank": r, "alpha": a, "modules": n} for (r, a), n in pairs.most_common()],
        "metadata": dict(sorted(adapter.metadata.items())),
        "hashes": _file_hashes(adapter.path),
        "notes": [DORA_A1111_NOTE] if adapter.adapter_type == "dora" else [],
    }
    if len(pairs) > 1:
        usual = pairs.most_common(1)[0][0]
        summary["per_module"] = {name: {"rank": r, "alpha": a} for name, (r, a) in sorted(per_module.items())
                                 if (r, a) != usual}
    return summary


def _short(value: str, limit: int = 100) -> str:
    return value if len(value) <= limit else value[: limit - 3] + "..."


def format_summary(s: dict) -> str:
    """Human-readable text of `summarize_file`'s dict."""
    lines = [
        f"file:          {s['path']}",
        f"format:        {s['format']}",
        f"adapter type:  {s['adapter_type']}",
        f"family:        {s['family'] or 'unknown'} ({s['family_reason']})",
        f"tensors:       {s['tensors']} ({', '.join(s['dtypes'])})",
        "modules:       " + ", ".join(f"{c} {n}" for c, n in s["modules"].items()),
        "rank / alpha:  " + "; ".join(f"rank {e['rank']} alpha {e['alpha']} x{e['modules']}" for e in s["rank_alpha"]),
    ]
    lines += [f"note:          {note}" for note in s.get("notes", [])]
    if "per_module" in s:
        lines.append("modules that differ from the most common rank / alpha:")
        lines += [f"  {name}: rank {v['rank']} alpha {v['alpha']}" for name, v in s["per_module"].items()]
    if s["hashes"]:
        lines.append("hashes:        " + ", ".join(f"{k} {v}" for k, v in s["hashes"].items()))
    if s["metadata"]:
        lines.append("metadata:")
        lines += [f"  {k}: {_short(v)}" for k, v in s["metadata"].items()]
    return "\n".join(lines)


def dumps(s: dict) -> str:
    return json.dumps(s, indent=2, sort_keys=False)
