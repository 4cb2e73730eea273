"""PNG files that AUTOMATIC1111 / ComfyUI users can read: a `parameters` text chunk, plus a JSON sidecar."""

from __future__ import annotations

import json
from pathlib import Path

from PIL import Image, PngImagePlugin

from sd_lora.fileio import atomic_path, atomic_write_text

__all__ = ["format_parameters", "image_record", "save_png", "read_parameters"]


def _quote(value: str) -> str:
    # AUTOMATIC1111 quotes values that hold its separators, as JSON strings.
    return json.dumps(value) if any(c in value for c in ',:"\n') else value


def _number(x: float) -> str:
    return f"{x:g}"


def format_parameters(generated, model: str, extra: dict[str, str] | None = None,
                      fused_hashes: dict[str, str] | None = None) -> str:
    """The AUTOMATIC1111 `parameters` text: prompt (with its `<lora:NAME:W>` tags), negative prompt, settings;
    `extra` fields (e.g. Model hash) before the version; `fused_hashes` {name: hash} of fused adapters."""
    r = generated.request
    tags = "".join(f" <lora:{u.path.stem if u.path.is_file() else u.path.name}:{_number(u.weight)}"
                   + ("" if getattr(u, "unet_weight", None) is None else f":{_number(u.unet_weight)}") + ">"
                   for u in generated.loras)
    lines = [generated.prompt + tags]
    if r.negative_prompt:
        lines.append(f"Negative prompt: {r.negative_prompt}")
    fields = [("Steps", str(r.steps)), ("Sampler", generated.sampler), ("CFG scale", _number(r.guidance)),
              ("Seed", str(r.seed)), ("Size", f"{generated.width}x{generated.height}"), ("Model", model)]
    if r.clip_skip:
        fields.append(("Clip skip", str(r.clip_skip)))
    if getattr(r, "guidance_rescale", 0):
        fields.append(("CFG Rescale", _number(r.guidance_rescale)))
    if getattr(generated, "zero_terminal_snr", False):
        fields.append(("Noise schedule", "zero terminal SNR"))
    if generated.loras:
        hashes = ", ".join(f"{u.path.stem if u.path.is_file() else u.path.name}: {u.hash}" for u in generated.loras)
        fields.append(("Lora hashes", hashes))
    if generated.fused:
        fields.append(("Fused LoRAs", ", ".join(f"{n}: {_number(w)}" for n, w in generated.fused.items())))
        if fused_hashes and not generated.loras:
            fields.append(("Lora hashes", ", ".join(f"{n}: {h}" for n, h in fused_hashes.items())))
    fields += list((extra or {}).items())
    fields.append(("Version", "sd-lora"))
    lines.append(", ".join(f"{k}: {_quote(v)}" for k, v in fields))
    return "\n".join(lines)


def image_record(generated, model: str, family: str | None = None) -> dict:
    """Everything needed to make the image again, for the JSON sidecar."""
    r = generated.request
    return {
        "prompt": generated.prompt, "negative_prompt": r.negative_prompt, "seed": r.seed, "steps": r.steps,
        "guidance": r.guidance, "width": generated.width, "height": generated.height, "sampler": generated.sampler,
        "clip_skip": r.clip_skip, "model": model, "family": family,
        "loras": [{"name": u.name, "path": str(u.path), "weight": u.weight, "hash": u.hash,
                   **({} if getattr(u, "unet_weight", None) is None else {"unet_weight": u.unet_weight})}
                  for u in generated.loras],
        "fused": generated.fused,
        "parameters": format_parameters(generated, model),
    }


def save_png(path: str | Path, image: Image.Image, parameters: str | None = None, sidecar: dict | None = None,
             extra_text: dict[str, str] | None = None) -> Path:
    """Write the PNG (and `<path>.json` when `sidecar` is given) atomically."""
    path = Path(path)
    info = PngImagePlugin.PngInfo()
    if parameters is not None:
        info.add_text("parameters", parameters)
    for key, value in (extra_text or {}).items():
        info.add_text(key, value)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG", pnginfo=info)
    if sidecar is not None:
        atomic_write_text(path.with_suffix(".json"), json.dumps(sidecar, indent=2) + "\n")
    return path


def read_parameters(path: str | Path) -> str | None:
    """The `parameters` text of a PNG, or None."""
    with Image.open(path) as im:
        return im.text.get("parameters")
