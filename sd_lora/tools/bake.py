"""Bake adapters into a base model's weights and write a checkpoint (kohya's merge_lora.py --sd_model).

Every adapter type bakes (LoRA, LoCon, LoHa, LoKr, DoRA) with the arithmetic peft uses when the adapter runs
unfused: W + w·ΔW, DoRA m·(W + w·s·BA)/‖W + w·s·BA‖, adapters applied in the order given. Two routes:
- single-file `.safetensors` in and out: the checkpoint is streamed tensor by tensor (read, bake the
  tensors adapters touch, cast, write), so memory holds one tensor, not the model; keys, order and metadata
  are the input's (`model_ema.*` copies are dropped: they would not carry the adapters); SD3 / FLUX
  transformer-only files in the original SAI / BFL layout (ComfyUI's diffusion models) bake the same way, each
  q/k/v (FLUX linear1) block into its rows of the fused tensor;
- otherwise the pipeline is loaded (diffusers folder, hub id or single file), baked in place and written as a
  single file in the original (ldm / sgm) layout AUTOMATIC1111 and ComfyUI load, or as a diffusers folder.
Every adapter is checked against the model before anything is written; outputs are written atomically.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from sd_lora.errors import SdLoraError
from sd_lora.fileio import atomic_path, is_write_failure, remove_stale_temporaries, write_failure_reason
from sd_lora.tools.bake_layout import plan_original
from sd_lora.tools.deltas import apply_delta, module_shape, read_adapter
from sd_lora.tools.merge import parse_weighted
from sd_lora.tools.output import parse_precision
from sd_lora.tools.progress import resolve
from sd_lora.tools.tensorfile import DTYPES, NAMES, iter_tensors, read_header

__all__ = ["BakeReport", "bake_adapters", "BAKED_KEY"]

BAKED_KEY = "sd_lora.baked"  # metadata: JSON list of the adapters (file, weight) baked in
_DROPPED = ("model_ema.",)


@dataclass
class BakeReport:
    output: Path
    kind: str  # single-file | diffusers
    family: str
    adapters: list[tuple[str, float, int]]  # file, weight, modules baked
    seconds: float
    route: str  # stream | pipeline

    def summary(self) -> str:
        parts = ", ".join(f"{Path(f).name} x{w:g} ({n} modules)" for f, w, n in self.adapters)
        return f"baked {parts} into {self.output} ({self.kind}, {self.family}, {self.route}) in {self.seconds:.0f} s"


# What a diffusers pipeline folder holds: a folder of only these (with model_index.json) is an earlier output.
_MODEL_ENTRIES = {"model_index.json", "unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2",
                  "scheduler", "feature_extractor", "safety_checker", "image_encoder"}


def _check_paths(model, loras, output: Path) -> None:
    for src in [model, *[p for p, _ in loras]]:
        if isinstance(src, (str, Path)) and Path(src).exists() and (
                output.resolve() == Path(src).resolve() or (output.exists() and output.samefile(src))):
            raise SdLoraError(f"{output}: the output path is also an input; write to another path.")
    if output.suffix == ".safetensors" and output.is_dir():
        raise SdLoraError(f"{output}: is a directory; a single-file output needs a file name.")
    if output.suffix != ".safetensors" and output.is_dir():
        others = sorted(p.name + ("/" if p.is_dir() else "") for p in output.iterdir() if p.name not in _MODEL_ENTRIES)
        if others or (any(output.iterdir()) and not (output / "model_index.json").is_file()):
            raise SdLoraError(f"{output}: the folder already holds files that are not a diffusers model "
                              f"({', '.join(others[:5]) or 'no model_index.json'}); the baked model replaces the "
                              "whole folder, so choose a new or empty folder. Nothing was written.")


def _free_space(path: Path, need: int) -> None:
    free = shutil.disk_usage(path.parent if path.parent.exists() else Path.cwd()).free
    if free < need + (16 << 20):
        raise SdLoraError(f"{path}: not enough disk space ({need / 2**30:.2f} GiB needed, {free / 2**30:.2f} GiB "
                          "free); nothing was written.")


def _transformer_plan(path: Path, shapes, layout, loras, family: str | None, allow_pickle: bool):
    """{checkpoint key: jobs} and counts for a transformer-only SD3 / FLUX file in the original layout (the
    `diffusion_models` files ComfyUI loads); q/k/v and FLUX's linear1 blocks are row blocks of one tensor."""
    from sd_lora.formats import transformer_files

    found, prefix, config = layout
    if family and family != found:
        raise SdLoraError(f"{path} is an {found} checkpoint, not {family}.")
    updates: dict[str, list] = {}
    counts = []
    for lora, weight in loras:
        adapter = read_adapter(lora, found, unet_config=config, allow_pickle=allow_pickle)
        mods = {(c, p): params for c, p, params in adapter.modules()}
        targets, problems = transformer_files.original_targets(mods, found, config, prefix)
        for key, (tensor, rows, _) in targets.items():
            want = module_shape(key[0], key[1], mods[key], found)
            have = shapes.get(tensor)
            if have is not None and rows:
                have = (rows[1] - rows[0], *have[1:])
            if have is None or tuple(have) != tuple(want):
                problems.append(f"{key[0]}.{key[1]}: the adapter builds {list(want)}, the checkpoint's {tensor} "
                                f"is {list(have) if have else 'missing'}")
        if problems:
            raise SdLoraError(f"{lora}: {len(problems)} adapter module(s) do not fit the checkpoint:\n  "
                              + "\n  ".join(problems[:8]) + "\nNothing was written.")
        for key, (tensor, rows, swap) in targets.items():
            where = f"{key[0]}.{key[1]}"
            params = transformer_files.swapped(mods[key], where) if swap else mods[key]
            updates.setdefault(tensor, []).append((rows, params, weight, where))
        counts.append((str(lora), weight, len(targets)))
    return found, updates, counts


def _stream_plan(path: Path, loras, family: str | None, allow_pickle: bool):
    from sd_lora.formats.transformer_files import checkpoint_layout
    from sd_lora.models.families.unet_single_file import read_checkpoint
    from sd_lora.models.families.unet_single_file_configs import derive_configs, detect_checkpoint_family, stored_record

    try:
        header, metadata, start = read_header(path)
    except SdLoraError:
        read_checkpoint(path, tensors=False)  # the loader's clearer error for damaged / foreign files
        raise
    shapes = {k: tuple(v["shape"]) for k, v in header.items()}
    layout = checkpoint_layout(shapes)
    if layout is not None:
        found, updates, counts = _transformer_plan(path, shapes, layout, loras, family, allow_pickle)
        return header, start, metadata, found, updates, counts
    read_checkpoint(path, tensors=False)  # the loader's clear errors for damaged / foreign files
    found = detect_checkpoint_family(dict.fromkeys(shapes), str(path))
    if family and family != found:
        raise SdLoraError(f"{path} is an {found} checkpoint, not {family}.")
    record = stored_record(metadata, str(path))
    if record is None:
        meta_sd = {k: torch.empty(s, device="meta") for k, s in shapes.items()}
        record = derive_configs(meta_sd, found, where=str(path))
    updates: dict[str, list] = {}
    counts = []
    for lora, weight in loras:
        adapter = read_adapter(lora, found, unet_config=record["unet"], allow_pickle=allow_pickle)
        mods = {(c, p): params for c, p, params in adapter.modules()}
        module_shapes = {k: module_shape(k[0], k[1], v, found) for k, v in mods.items()}
        try:
            plan = plan_original(mods, shapes, found, record["unet"], module_shapes)
        except SdLoraError as e:
            raise SdLoraError(f"{lora}: {e}") from None
        for key, target in plan.items():
            updates.setdefault(target.key, []).append((target.rows, mods[key], weight, f"{key[0]}.{key[1]}"))
        counts.append((str(lora), weight, len(plan)))
    return header, start, metadata, found, updates, counts


def _bake_tensor(t: torch.Tensor, jobs) -> torch.Tensor:
    t = t.to(torch.float32)
    for rows, params, weight, where in jobs:
        part = t[rows[0]:rows[1]] if rows else t
        part.copy_(apply_delta(part, params, weight, tuple(part.shape), where).reshape(part.shape))
    return t


def _stream(src: Path, out: Path, loras, family, dtype, allow_pickle, progress) -> tuple[str, list]:
    header, start, metadata, found, updates, counts = _stream_plan(src, loras, family, allow_pickle)
    keys = sorted((k for k in header if not k.startswith(_DROPPED)), key=lambda k: header[k]["data_offsets"][0])
    new_header, offset = {}, 0
    for k in keys:
        d = DTYPES[header[k]["dtype"]]
        out_dtype = dtype if d.is_floating_point else d
        n = int(torch.Size(header[k]["shape"]).numel()) * torch.empty((), dtype=out_dtype).element_size()
        new_header[k] = {"dtype": NAMES[out_dtype], "shape": header[k]["shape"], "data_offsets": [offset, offset + n]}
        offset += n
    meta = {**metadata, BAKED_KEY: json.dumps([{"file": Path(f).name, "weight": w} for f, w, _ in counts])}
    text = json.dumps({"__metadata__": meta, **new_header}, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    _free_space(out, 8 + len(text) + offset)
    with atomic_path(out) as tmp, open(tmp, "wb") as w:
        w.write(struct.pack("<Q", len(text)) + text)
        for i, (k, t) in enumerate(iter_tensors(src, header, start, keys)):
            if k in updates:
                t = _bake_tensor(t, updates[k])
            if t.is_floating_point():
                t = t.to(dtype)
            w.write(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
            if progress:
                progress(i + 1, len(keys), k)
        w.flush()
        _verify_single_file(tmp, new_header)
    return found, counts


def _verify_single_file(path: Path, want: dict) -> None:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        got = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    if got != {k: list(v["shape"]) for k, v in want.items()}:
        raise SdLoraError(f"{path}: the written checkpoint does not read back with the expected tensors; not kept.")


def _bake_pipeline(pipe, family: str, loras, allow_pickle: bool) -> list:
    from sd_lora.formats.validate import find_non_finite, resolve_modules
    from sd_lora.tools.basemodel import BaseComponents, components_of

    base = BaseComponents(components_of(pipe, family), family)
    plans = []
    for lora, weight in loras:
        adapter = read_adapter(lora, family, unet_config=dict(pipe.unet.config), allow_pickle=allow_pickle)
        _, problems = resolve_modules(adapter.weights, base.components)
        problems += [f"{m}: holds NaN or inf" for m in find_non_finite(adapter.weights)]
        if problems:
            raise SdLoraError(f"{lora}: does not fit the model ({len(problems)} problem(s)): "
                              + "; ".join(problems[:5]) + ". Nothing was written.")
        plans.append((lora, weight, adapter))
    counts = []
    with torch.no_grad():
        for lora, weight, adapter in plans:
            for component, path, params in adapter.modules():
                layer = base.module(component, path)
                shape = tuple(layer.weight.shape)
                new = apply_delta(layer.weight, params, weight, shape, f"{component}.{path}")
                layer.weight.copy_(new.reshape(shape).to(layer.weight.dtype))
            counts.append((str(lora), weight, adapter.num_modules))
    return counts


def _save_folder(pipe, out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise SdLoraError(f"{out}: exists and is not a folder; a diffusers output needs a folder path.")
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        pipe.save_pretrained(str(tmp))
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
            os.replace(out, old / out.name)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, Exception) and is_write_failure(e):
            raise SdLoraError(f"{out}: could not write the folder: {write_failure_reason(e)}; nothing was changed. "
                              "Free some space or fix the permissions, or choose another output folder.") from None
        raise


def _pipeline_size(pipe, dtype: torch.dtype) -> int:
    size = torch.empty((), dtype=dtype).element_size()
    return sum(p.numel() * (size if p.is_floating_point() else p.element_size())
               for name in ("unet", "vae", "text_encoder", "text_encoder_2")
               if getattr(pipe, name, None) is not None for p in getattr(pipe, name).state_dict().values())


def bake_adapters(model, loras, output, *, save_precision="fp16", family: str | None = None,
                  allow_pickle: bool = False, progress=None) -> BakeReport:
    """Bake `loras` (['A.safetensors:0.8', (path, weight)]) into `model` and write `output`.

    `output` ending in `.safetensors`: one original-layout file; anything else: a diffusers folder. `model`: a
    single file, diffusers folder, hub id, `builtin:` name or a loaded pipeline (which is then changed in place).
    `progress`: None (quiet), True (a line every few seconds) or a callable(done, total, name).
    """
    start = time.monotonic()
    progress = resolve(progress, "bake")
    output = Path(output)
    pairs = [parse_weighted(s) for s in loras]
    if not pairs:
        raise SdLoraError("no adapters to bake (give --lora FILE:WEIGHT).")
    for path, _ in pairs:
        if not Path(path).exists():
            raise SdLoraError(f"{path}: no such file.")
    _check_paths(model, pairs, output)
    dtype = parse_precision(save_precision)
    single_out = output.suffix == ".safetensors"
    src = Path(model) if isinstance(model, (str, Path)) else None
    if src is not None and src.is_file() and src.suffix == ".safetensors" and single_out:
        try:
            found, counts = _stream(src, output, pairs, family, dtype, allow_pickle, progress)
        except OSError as e:
            raise SdLoraError(f"{output}: could not write the checkpoint ({write_failure_reason(e)}); nothing was "
                              "written. Free some space or fix the folder's permissions, or choose another "
                              "output path.") from None
        return BakeReport(output, "single-file", found, counts, time.monotonic() - start, "stream")
    if src is not None:
        from sd_lora.models.load import load_pipeline

        pipe, _ = load_pipeline(str(model), allow_pickle=allow_pickle)
    else:
        pipe = model
    from sd_lora.formats.detect import FAMILY_NAMES, pipeline_family
    from sd_lora.models.families import file_family

    found = pipeline_family(pipe)
    if not file_family(found).bakes_to_single_file:
        raise SdLoraError(f"baking into a {FAMILY_NAMES[found]} pipeline or diffusers folder is not supported yet; "
                          "give the transformer as one original-layout .safetensors file (as ComfyUI loads it) and "
                          "a .safetensors output. Nothing was written.")
    if family and family != found:
        raise SdLoraError(f"{model}: is an {FAMILY_NAMES[found]} model, not {FAMILY_NAMES[family]}; "
                          "nothing was written.")
    counts = _bake_pipeline(pipe, found, pairs, allow_pickle)
    pipe.to(dtype)
    _free_space(output, _pipeline_size(pipe, dtype))
    if single_out:
        from sd_lora.models.families.unet_single_file import save_single_file

        try:
            save_single_file(pipe, output, found)
        except Exception as e:
            if not is_write_failure(e):
                raise
            raise SdLoraError(f"{output}: could not write the checkpoint ({write_failure_reason(e)}); nothing was "
                              "written. Free some space or fix the folder's permissions, or choose another "
                              "output path.") from None
    else:
        _save_folder(pipe, output)
    return BakeReport(output, "single-file" if single_out else "diffusers", found, counts,
                      time.monotonic() - start, "pipeline")
