"""Pages and API of the queue: the run list, the new-run form (with presets, TOML import/export), a run's page."""

from __future__ import annotations

import os
from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse, Response

from sd_lora.errors import SdLoraError
from sd_lora.studio import forms, runview
from sd_lora.studio.runner import run_dir

__all__ = ["router"]


def _problems_by_field(problems: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    """{'section.key': [messages]} for problems that name a form field, and the rest."""
    keys = {f.key for _, fields in forms.form_sections() for f in fields}
    by_field: dict[str, list[str]] = {}
    general = []
    for p in problems:
        head = p.split(":", 1)[0].strip()
        key = head if head in keys else ("data.subsets" if head.startswith("data.subsets") else None)
        if key:
            by_field.setdefault(key, []).append(p)
        else:
            general.append(p)
    return by_field, general


def router(studio, page) -> APIRouter:
    r = APIRouter()

    def form_page(request: Request, values: dict, problems: list[str], status_code: int = 200, note: str = ""):
        by_field, general = _problems_by_field(problems)
        return page(request, "new_run.html", status_code, sections=forms.form_sections(), values=values,
                    problems=by_field, general=general, presets=sorted(studio.presets()), note=note,
                    subsets_key=forms.SUBSETS_KEY)

    @r.get("/runs")
    async def runs(request: Request):
        runs = studio.store.runs()
        return page(request, "runs.html", runs=runs, queued=[x.id for x in studio.store.queued()])

    @r.get("/runs/new")
    async def new_run(request: Request, preset: str | None = None):
        data: dict = {}
        note = ""
        if preset:
            presets = studio.presets()
            if preset not in presets:
                raise LookupError(f"preset {preset!r} does not exist; presets: {', '.join(sorted(presets)) or 'none'}")
            data = forms.preset_data(presets[preset], studio.roots)
            note = f"loaded the preset {preset}"
        return form_page(request, forms.form_values(data), [], note=note)

    @r.post("/runs/new")
    async def submit_run(request: Request):
        form = await request.form()
        values = {k: str(v) for k, v in form.multi_items() if isinstance(v, str)}  # the last of a checkbox's pair
        action = values.get("action", "queue")
        data, problems = forms.data_from_form(values)
        cfg, problems = forms.validate(data, studio.roots, problems)
        if problems:
            return form_page(request, values, problems, status_code=422)
        if action == "export":
            name = (cfg.output.name or "run") + ".toml"
            return Response(forms.export_toml(data), media_type="application/toml",
                            headers={"content-disposition": f'attachment; filename="{name}"'})
        if action == "validate":
            return form_page(request, values, [], note="config OK")
        run_id = studio.store.add_run(cfg.output.name, forms.export_toml(data))
        return RedirectResponse(f"/runs/{run_id}", status_code=303)

    @r.post("/runs/import")
    async def import_toml(request: Request):
        form = await request.form()
        text = str(form.get("toml") or "")
        upload = form.get("file")
        if upload is not None and not isinstance(upload, str) and upload.filename:
            raw = await upload.read()
            try:
                text = raw.decode("utf-8-sig")
            except UnicodeDecodeError:
                raise SdLoraError(f"{upload.filename}: not UTF-8 text") from None
        data = forms.parse_toml(text, "the imported TOML")
        data.get("output", {}).pop("dir", None)
        _, problems = forms.validate(data, studio.roots)
        return form_page(request, forms.form_values(data), problems, note="imported the TOML")

    def _run(run_id: int):
        run = studio.store.get(run_id)
        if run is None:
            raise LookupError(f"run {run_id} does not exist")
        return run

    @r.get("/runs/{run_id}")
    async def run_page(request: Request, run_id: int):
        run = _run(run_id)
        folder = run_dir(studio.home, run_id)
        out = folder / "output"
        state = runview.progress(out, folder / "train.log", studio.run_max_steps(run))
        return page(request, "run.html", run=run, state=state, chart=runview.loss_svg(state["losses"], state["validation"]),
                    files=runview.output_files(out), log=runview.log_tail(folder / "train.log"))

    @r.get("/api/runs")
    async def api_runs():
        return [{"id": x.id, "name": x.name, "status": x.status, "message": x.message} for x in studio.store.runs()]

    @r.get("/api/runs/{run_id}")
    async def api_run(run_id: int):
        run = _run(run_id)
        folder = run_dir(studio.home, run_id)
        state = runview.progress(folder / "output", folder / "train.log", studio.run_max_steps(run))
        return {"id": run.id, "name": run.name, "status": run.status, "message": run.message, **state,
                "chart": runview.loss_svg(state["losses"], state["validation"]),
                "log": runview.log_tail(folder / "train.log", 6000),
                "files": runview.output_files(folder / "output")}

    @r.post("/runs/{run_id}/{action}")
    async def run_action(request: Request, run_id: int, action: str):
        _run(run_id)
        if action == "stop":
            studio.runner.stop(run_id)
        elif action == "resume":
            studio.runner.resume(run_id)
        elif action in ("up", "down"):
            studio.runner.move(run_id, -1 if action == "up" else 1)
        else:
            raise LookupError(f"unknown action {action!r}; use stop, resume, up or down")
        if request.headers.get("accept", "").startswith("application/json"):
            return JSONResponse({"id": run_id, "status": studio.store.get(run_id).status})
        back = request.headers.get("referer", "")
        return RedirectResponse("/runs" if back.endswith("/runs") else f"/runs/{run_id}", status_code=303)

    @r.get("/runs/{run_id}/config.toml")
    async def run_config(run_id: int):
        run = _run(run_id)
        return Response(run.config, media_type="application/toml",
                        headers={"content-disposition": f'attachment; filename="{run.name}.toml"'})

    @r.get("/runs/{run_id}/files/{rel:path}")
    async def run_file(run_id: int, rel: str):
        _run(run_id)
        out = (run_dir(studio.home, run_id) / "output").resolve()
        if rel.startswith("/") or ".." in Path(rel).parts:
            raise LookupError(f"{rel}: not a file of run {run_id}")
        target = Path(os.path.realpath(out / rel))
        if out not in target.parents or not target.is_file():
            raise LookupError(f"{rel}: not a file of run {run_id}")
        inline = target.suffix == ".png"
        return FileResponse(target, filename=None if inline else target.name,
                            media_type="image/png" if inline else None)

    return r
