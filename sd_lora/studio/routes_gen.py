"""Adapters (from finished runs and the LoRA folders, with `inspect`'s facts) and the generate page."""

from __future__ import annotations

import base64

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from sd_lora.errors import SdLoraError
from sd_lora.inference.schedulers import SCHEDULERS

__all__ = ["router", "parse_number"]


def parse_number(value, kind, where: str):
    try:
        return kind(str(value).strip())
    except ValueError:
        raise SdLoraError(f"{where}: expected {'an integer' if kind is int else 'a number'}, got {value!r}") from None


def router(studio, page) -> APIRouter:
    r = APIRouter()

    @r.get("/adapters")
    async def adapters(request: Request):
        from sd_lora.formats.summary import summarize_file

        rows = []
        for known in studio.adapters().values():
            try:
                facts = summarize_file(known.path)
            except SdLoraError as e:
                facts = {"error": str(e)}
            rows.append({"adapter": known, "facts": facts})
        return page(request, "adapters.html", rows=rows)

    def gen_page(request: Request, status_code: int = 200, **context):
        return page(request, "generate.html", status_code, models=studio.models(), checkpoint=studio.checkpoint(),
                    adapters=sorted(studio.adapters()), samplers=list(SCHEDULERS), **context)

    @r.get("/generate")
    async def generate_form(request: Request, lora: str | None = None):
        return gen_page(request, form={f"lora:{lora}": "1"} if lora else {})

    @r.post("/generate")
    async def generate(request: Request):
        form = {k: str(v) for k, v in (await request.form()).items() if isinstance(v, str)}
        model = form.get("model") or studio.checkpoint()
        if model not in studio.models():
            raise SdLoraError(f"model {model!r} is not one of the studio's models: {', '.join(studio.models())}")
        known = studio.adapters()
        loras = []
        for name in known:
            raw = form.get(f"lora:{name}", "").strip()
            if raw and parse_number(raw, float, f"weight of {name}") != 0.0:
                loras.append((name, parse_number(raw, float, f"weight of {name}")))
        width = form.get("width", "").strip()
        height = form.get("height", "").strip()
        try:
            images = await run_in_threadpool(
                studio.generator.generate, model, known, prompt=form.get("prompt", ""), negative_prompt=form.get("negative_prompt", ""),
                seed=parse_number(form.get("seed", "-1") or "-1", int, "seed"),
                steps=parse_number(form.get("steps", "20") or "20", int, "steps"),
                cfg_scale=parse_number(form.get("cfg_scale", "7") or "7", float, "CFG scale"),
                sampler=form.get("sampler", "Euler a"), width=int(width) if width.isdigit() else None,
                height=int(height) if height.isdigit() else None,
                batch_size=parse_number(form.get("batch_size", "1") or "1", int, "batch size"), loras=loras)
        except SdLoraError as e:
            return gen_page(request, status_code=422, form=form, error=str(e))
        shown = [{"src": "data:image/png;base64," + base64.b64encode(g.png).decode(), "parameters": g.parameters}
                 for g in images]
        return gen_page(request, form=form, images=shown)

    return r
