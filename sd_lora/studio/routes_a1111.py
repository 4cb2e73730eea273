"""The subset of AUTOMATIC1111's web API that scripts use (`/sdapi/v1/...`), answered by sd-lora's generator.

Field names and shapes follow A1111, so clients such as the `webuiapi` package work unchanged."""

from __future__ import annotations

import base64
import binascii
import io
import json

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from sd_lora.errors import SdLoraError
from sd_lora.inference.schedulers import SCHEDULERS

__all__ = ["router"]


def _b64_image(value: str) -> bytes:
    if not isinstance(value, str) or not value:
        raise SdLoraError("image: expected a base64 PNG (optionally a data: URL)")
    if value.startswith("data:"):
        value = value.split(",", 1)[-1]
    try:
        return base64.b64decode(value, validate=False)
    except (binascii.Error, ValueError):
        raise SdLoraError("image: not valid base64") from None


def _sampler(payload: dict) -> str:
    name = payload.get("sampler_name") or payload.get("sampler_index") or "Euler a"
    scheduler = str(payload.get("scheduler") or "").lower()
    if scheduler == "karras" and f"{name} Karras" in SCHEDULERS:
        return f"{name} Karras"
    return name


def _int(payload: dict, key: str, default: int) -> int:
    value = payload.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise SdLoraError(f"{key}: expected an integer, got {value!r}")
    return int(value)


def _float(payload: dict, key: str, default: float) -> float:
    value = payload.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SdLoraError(f"{key}: expected a number, got {value!r}")
    return float(value)


def router(studio, page) -> APIRouter:
    r = APIRouter(prefix="/sdapi/v1")

    @r.get("/sd-models")
    async def sd_models():
        from sd_lora.inference.hashes import base_model_hash

        out = []
        for m in studio.models():
            h = base_model_hash(m) if not m.startswith("builtin:") else None
            out.append({"title": m, "model_name": m, "hash": (h or "")[:10] or None, "sha256": h, "filename": m,
                        "config": None})
        return out

    @r.get("/options")
    async def get_options():
        return {"sd_model_checkpoint": studio.checkpoint(), "sd_checkpoint_hash": None,
                "samples_format": "png", "CLIP_stop_at_last_layers": 1}

    @r.post("/options")
    async def set_options(request: Request):
        payload = await _json(request)
        model = payload.get("sd_model_checkpoint")
        if model is not None:
            if model not in studio.models():
                raise SdLoraError(f"sd_model_checkpoint: {model!r} is not one of the studio's models: "
                                  f"{', '.join(studio.models())}")
            studio.store.set_option("sd_model_checkpoint", model)
        return None

    @r.get("/samplers")
    async def samplers():
        return [{"name": name, "aliases": [cls], "options": {k: str(v) for k, v in extra.items()}}
                for name, (cls, extra) in SCHEDULERS.items()]

    @r.get("/schedulers")
    async def schedulers():
        return [{"name": "automatic", "label": "Automatic", "aliases": None, "default_rho": -1, "need_inner_model": False},
                {"name": "karras", "label": "Karras", "aliases": None, "default_rho": 7.0, "need_inner_model": False}]

    @r.get("/scripts")
    async def scripts():
        return {"txt2img": [], "img2img": []}

    @r.get("/loras")
    async def loras():
        from sd_lora.formats.summary import summarize_file

        out = []
        for known in studio.adapters().values():
            try:
                metadata = summarize_file(known.path).get("metadata", {})
            except SdLoraError:
                metadata = {}
            out.append({"name": known.name, "alias": known.name, "path": str(known.path), "metadata": metadata})
        return out

    @r.post("/txt2img")
    async def txt2img(request: Request):
        payload = await _json(request)
        model = (payload.get("override_settings") or {}).get("sd_model_checkpoint") or studio.checkpoint()
        if model not in studio.models():
            raise SdLoraError(f"sd_model_checkpoint: {model!r} is not one of the studio's models")
        batch = _int(payload, "batch_size", 1) * _int(payload, "n_iter", 1)
        width, height = _int(payload, "width", 512), _int(payload, "height", 512)
        images = await run_in_threadpool(
            studio.generator.generate, model, studio.adapters(), prompt=str(payload.get("prompt", "")),
            negative_prompt=str(payload.get("negative_prompt", "")), seed=_int(payload, "seed", -1),
            steps=_int(payload, "steps", 20), cfg_scale=_float(payload, "cfg_scale", 7.0), sampler=_sampler(payload),
            width=width, height=height, batch_size=batch)
        info = {"prompt": payload.get("prompt", ""), "negative_prompt": payload.get("negative_prompt", ""),
                "seed": images[0].seed, "all_seeds": [g.seed for g in images], "width": images[0].width,
                "height": images[0].height, "sampler_name": _sampler(payload), "steps": _int(payload, "steps", 20),
                "cfg_scale": _float(payload, "cfg_scale", 7.0), "sd_model_name": model,
                "infotexts": [g.parameters for g in images]}
        return {"images": [base64.b64encode(g.png).decode() for g in images], "parameters": payload,
                "info": json.dumps(info)}

    @r.post("/png-info")
    async def png_info(request: Request):
        from PIL import Image, UnidentifiedImageError

        payload = await _json(request)
        data = _b64_image(payload.get("image", ""))
        try:
            with Image.open(io.BytesIO(data)) as im:
                text = dict(getattr(im, "text", {}) or {})
        except (UnidentifiedImageError, OSError):
            raise SdLoraError("image: not a readable image") from None
        parameters = text.pop("parameters", "")
        return {"info": parameters, "items": text, "parameters": _parse_parameters(parameters)}

    return r


async def _json(request: Request) -> dict:
    try:
        payload = await request.json()
    except ValueError:
        raise SdLoraError("the request body is not JSON") from None
    if not isinstance(payload, dict):
        raise SdLoraError("the request body must be a JSON object")
    return payload


def _parse_parameters(text: str) -> dict:
    """A1111 parameters text -> {"Prompt": ..., "Negative prompt": ..., "Steps": "20", ...} (values as strings)."""
    if not text:
        return {}
    lines = text.split("\n")
    settings = lines[-1] if len(lines) > 1 else ""
    out = {"Prompt": lines[0]}
    for line in lines[1:-1]:
        if line.startswith("Negative prompt: "):
            out["Negative prompt"] = line[len("Negative prompt: "):]
    for part in _split_settings(settings):
        key, sep, value = part.partition(": ")
        if sep:
            out[key.strip()] = value.strip().strip('"')
    return out


def _split_settings(line: str) -> list[str]:
    parts, current, quoted = [], "", False
    for ch in line:
        if ch == '"':
            quoted = not quoted
        if ch == "," and not quoted:
            parts.append(current)
            current = ""
        else:
            current += ch
    if current:
        parts.append(current)
    return parts
