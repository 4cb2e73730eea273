"""Write a tool's result as a community adapter file: full metadata, hashes, atomic, read back and checked.

Like `formats.export.save_adapter` (what `train` uses), but from neutral weights instead of peft layers and
streamed (one tensor's bytes at a time): the tensors are serialized with their hashes into a temporary file
beside the target, which is then parsed back (by safetensors and by sd-lora), checked tensor by tensor for
names, shapes and dtypes and by SHA-256 for the data, mapped back module by module (and, when models are given,
validated against them) before the rename. Anything wrong, including a full disk, leaves no file behind.
"""

from __future__ import annotations

import errno
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from sd_lora.errors import SdLoraError
from sd_lora.fileio import atomic_path
from sd_lora.formats import transformer_files
from sd_lora.formats.community import AdapterWeights, adapter_type, from_community, to_community
from sd_lora.formats.export import weights_facts
from sd_lora.formats.metadata import HASH_KEYS, LAYOUT_KEY, minimum_metadata, unet_layout
from sd_lora.models.families import file_family
from sd_lora.tools.tensorfile import NAMES, data_sha256, read_header, write_with_hashes

__all__ = ["WriteReport", "write_adapter", "check_output_path", "parse_precision", "TOOL_KEY"]

TOOL_KEY = "sd_lora.tool"  # JSON: which tool made the file, from what, with which options
_DROP = {*HASH_KEYS, "lora_adapter_metadata", "sd_lora.community", "ss_network_module", "ss_network_dim",
         "ss_network_alpha", "modelspec.date", "modelspec.title", TOOL_KEY}
PRECISIONS = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32, "float": torch.float32,
              "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


@dataclass
class WriteReport:
    path: Path
    adapter_type: str
    modules: dict[str, int]  # component -> modules written (and read back)
    bytes: int

    def summary(self) -> str:
        parts = ", ".join(f"{c} {n}" for c, n in self.modules.items())
        size = self.bytes / 2**20
        return f"wrote {self.path} ({self.adapter_type}, {parts} modules, {size:.1f} MiB), read back whole"


def parse_precision(value) -> torch.dtype:
    if isinstance(value, torch.dtype):
        return value
    try:
        return PRECISIONS[str(value)]
    except KeyError:
        raise SdLoraError(f"unknown precision {value!r}; expected fp16, bf16 or fp32") from None


def check_output_path(out, inputs) -> Path:
    """The output path, refused when it is one of the inputs (the result would replace what it is read from)."""
    out = Path(out)
    for src in inputs:
        src = Path(src)
        if out.resolve() == src.resolve() or (out.exists() and src.exists() and out.samefile(src)):
            raise SdLoraError(f"{out}: the output path is also an input; write to another file.")
    if out.is_dir():
        raise SdLoraError(f"{out}: is a directory; give a .safetensors file name.")
    return out


def _cast(weights: AdapterWeights, dtype: torch.dtype) -> AdapterWeights:
    return {c: {p: {k: v.detach().to("cpu", dtype).contiguous() for k, v in params.items()}
                for p, params in modules.items()} for c, modules in weights.items() if modules}


def _metadata(weights: AdapterWeights, family: str, unet_config, inherited: dict, info: dict,
              tool: dict, comment: str | None, overrides: dict | None = None) -> dict[str, str]:
    facts = weights_facts(weights)
    if transformer_files.is_transformer_family(family):
        info = {"model_variant": transformer_files.variant(family, unet_config), **info}
    derived = minimum_metadata({"family": family, **facts, **info})
    meta = {k: v for k, v in (inherited or {}).items() if k not in _DROP and not k.startswith("sd_lora.")}
    try:
        args = json.loads(meta.get("ss_network_args") or "{}")
    except json.JSONDecodeError:
        args = {}
    args = {k: v for k, v in args.items() if k not in ("conv_dim", "conv_alpha", "algo", "dora_wd")}
    meta.update(derived)
    meta["ss_network_args"] = json.dumps({**args, **json.loads(derived["ss_network_args"])}, sort_keys=True)
    if comment:
        old = meta.get("ss_training_comment")
        meta["ss_training_comment"] = f"{comment}; {old}" if old and old != "None" else comment
    meta[TOOL_KEY] = json.dumps(tool, sort_keys=True)
    meta.update(overrides or {})
    if file_family(family).community_naming == "sgm":  # its names depend on the UNet layout
        meta[LAYOUT_KEY] = json.dumps(unet_layout(unet_config), sort_keys=True)
    elif transformer_files.is_transformer_family(family):
        meta[LAYOUT_KEY] = json.dumps(transformer_files.layout(unet_config), sort_keys=True)
    return meta


def _check_space(path: Path, need: int) -> None:
    free = shutil.disk_usage(path.parent if path.parent.exists() else Path.cwd()).free
    if free < need + (1 << 20):
        raise SdLoraError(f"{path}: not enough disk space ({need / 2**20:.1f} MiB needed, {free / 2**20:.1f} MiB "
                          "free); nothing was written.")


def _read_back(tmp: Path, path: Path, weights: AdapterWeights, written: dict[str, torch.Tensor], family: str,
               unet_config, components, digest: str) -> dict:
    """The file parses (safetensors' own reader), holds exactly the tensors written with their shapes and dtypes,
    its data bytes hash to what was serialized, its names map back to the same modules, the models accept it."""
    from safetensors import safe_open

    header, meta, start = read_header(tmp)
    with safe_open(str(tmp), framework="pt") as f:  # the library parses the file too (no data touched)
        keys = set(f.keys())
    wrong = [] if keys == set(written) else sorted(keys ^ set(written))[:3]
    wrong += [k for k, v in header.items() if k in written and (
        list(written[k].shape) != v["shape"] or NAMES[written[k].dtype] != v["dtype"])]
    if data_sha256(tmp, start) != digest or meta.get("sshs_model_hash") != digest:
        wrong.append("the tensor data (its SHA-256 differs from what was written)")
    meta_back = {k: torch.empty(v["shape"], dtype=written[k].dtype, device="meta") for k, v in header.items()
                 if k in written}
    back, problems = from_community(meta_back, family, unet_config)
    wrong += problems
    for component, modules in weights.items():
        for module, params in modules.items():
            got = back.get(component, {}).get(module)
            if got is None or set(got) != set(params):
                wrong.append(f"{component}.{module}")
    if components:
        from sd_lora.formats.validate import resolve_modules

        wrong += resolve_modules(back, components)[1]
    if wrong:
        raise SdLoraError(f"{path}: the written file does not read back as written ({len(wrong)} module(s), e.g. "
                          f"{wrong[:3]}); it was not kept.")
    if transformer_files.is_transformer_family(family):
        # shapes-only reading splits a fused module into all its blocks, also the untrained ones (zero rows)
        return {c: len(m) for c, m in weights.items()}
    return {c: len(m) for c, m in back.items()}


def write_adapter(path, weights: AdapterWeights, family: str, unet_config, *, save_precision="fp16",
                  inherited: dict | None = None, info: dict | None = None, tool: dict | None = None,
                  comment: str | None = None, components: dict | None = None,
                  overrides: dict[str, str] | None = None) -> WriteReport:
    """Write `weights` (neutral layout) as a community file at `path`, atomically; returns what was written.

    `inherited`: metadata of an input to carry over (ss_* training facts, recipe); `info`: extra
    `minimum_metadata` facts (prediction_type, title); `tool`: recorded as JSON under `TOOL_KEY`;
    `comment`: prepended to ss_training_comment; `components`: models to validate the file against;
    `overrides`: metadata values that win over everything else.
    """
    path = Path(path)
    weights = _cast(weights, parse_precision(save_precision))
    if not weights:
        raise SdLoraError(f"{path}: no modules to write.")
    info = {"title": path.stem, **(info or {})}
    meta = _metadata(weights, family, unet_config, inherited or {}, info, tool or {}, comment, overrides)
    tensors = to_community(weights, family, unet_config)
    _check_space(path, sum(t.numel() * t.element_size() for t in tensors.values()) + (4 << 20))
    try:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                size, digest = write_with_hashes(f, tensors, meta)
            modules = _read_back(tmp, path, weights, tensors, family, unet_config, components, digest)
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise SdLoraError(f"{path}: the disk filled up while writing; nothing was written. Free some space "
                              "or write to another disk.") from None
        raise SdLoraError(f"{path}: could not write the file ({e.strerror or e}); nothing was written. Free some "
                          "space or fix the folder's permissions, or choose another output path.") from None
    return WriteReport(path, adapter_type(weights), modules, size)
