"""The studio's web app: pages (server-rendered, a little JavaScript), a JSON API for them, and the
AUTOMATIC1111-compatible API. Everything it does is a call into sd_lora's library or a `sd-lora train` run."""

from __future__ import annotations

import contextlib
import sys
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from sd_lora.errors import SdLoraError
from sd_lora.studio import forms
from sd_lora.studio.db import Store
from sd_lora.studio.generation import Generator, KnownAdapter
from sd_lora.studio.paths import PathRefused, Roots
from sd_lora.studio.runner import Runner, run_dir
from sd_lora.studio.security import Guard, SecurityMiddleware

__all__ = ["Settings", "create_app"]

_HERE = Path(__file__).parent


@dataclass
class Settings:
    home: Path
    data_roots: list[Path] = field(default_factory=list)
    lora_dirs: list[Path] = field(default_factory=list)
    models: list[str] = field(default_factory=lambda: ["builtin:tiny"])
    presets_dir: Path | None = None
    guard: Guard = field(default_factory=Guard)
    concurrency: int = 1
    device: str = "auto"
    start_queue: bool = True


class Studio:
    """What the routes share: the state store, the queue, the roots and the generator."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.home = Path(settings.home).expanduser().resolve()
        self.home.mkdir(parents=True, exist_ok=True)
        self.roots = Roots(settings.data_roots)
        self.store = Store(self.home / "studio.sqlite3")
        self.runner = Runner(self.store, self.home, self.roots, concurrency=settings.concurrency)
        self.generator = Generator(device=settings.device)

    # ---- adapters and models --------------------------------------------------------------------------
    def adapters(self) -> dict[str, KnownAdapter]:
        found: dict[str, KnownAdapter] = {}
        for folder in self.settings.lora_dirs:
            folder = Path(folder)
            if folder.is_dir():
                for p in sorted(folder.glob("*.safetensors")):
                    found.setdefault(p.stem, KnownAdapter(p.stem, p.resolve(), str(folder)))
        for run in self.store.with_status("done"):
            out = run_dir(self.home, run.id) / "output"
            for p in sorted(out.glob("*.safetensors")):
                if "-step" not in p.stem:
                    name = f"{p.stem}-run{run.id}"
                    found[name] = KnownAdapter(name, p.resolve(), f"run {run.id}")
        return found

    def models(self) -> list[str]:
        return list(dict.fromkeys(self.settings.models))

    def checkpoint(self) -> str:
        current = self.store.option("sd_model_checkpoint")
        return current if current in self.models() else self.models()[0]

    def presets(self) -> dict[str, Path]:
        folder = self.settings.presets_dir
        return {p.stem: p for p in sorted(folder.glob("*.toml"))} if folder and folder.is_dir() else {}

    def run_max_steps(self, run) -> int | None:
        try:
            data = forms.parse_toml(run.config)
        except SdLoraError:
            return None
        steps = data.get("train", {}).get("max_steps", 1000)
        return steps if isinstance(steps, int) else None


def _wants_json(request: Request) -> bool:
    return request.url.path.startswith(("/api/", "/sdapi/"))


def create_app(settings: Settings) -> FastAPI:
    studio = Studio(settings)
    templates = Jinja2Templates(directory=str(_HERE / "templates"))
    templates.env.globals["roots"] = studio.roots

    @contextlib.asynccontextmanager
    async def lifespan(_app):
        if settings.start_queue:
            studio.runner.start()
        yield
        studio.runner.shutdown()
        studio.store.close()

    app = FastAPI(title="sd-lora studio", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.studio = studio
    app.mount("/static", StaticFiles(directory=str(_HERE / "static")), name="static")

    def page(request: Request, name: str, status_code: int = 200, **context) -> HTMLResponse:
        return templates.TemplateResponse(request, name, context, status_code=status_code)

    def error(request: Request, status: int, message: str) -> Response:
        if _wants_json(request):
            return JSONResponse({"error": message, "detail": message}, status_code=status)
        return page(request, "error.html", status, status=status, message=message)

    @app.exception_handler(PathRefused)
    async def _refused(request: Request, e: PathRefused):
        return error(request, 403, str(e))

    @app.exception_handler(SdLoraError)
    async def _user_error(request: Request, e: SdLoraError):
        return error(request, 400, str(e))

    @app.exception_handler(LookupError)
    async def _not_found(request: Request, e: LookupError):
        return error(request, 404, str(e.args[0]) if e.args else "not found")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        return error(request, e.status_code, str(e.detail))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        parts = [f"{'.'.join(str(x) for x in err.get('loc', ())[1:]) or 'body'}: {err.get('msg')}" for err in e.errors()]
        return error(request, 422, "; ".join(parts) or "invalid request")

    @app.exception_handler(ClientDisconnect)
    async def _disconnect(request: Request, e: ClientDisconnect):
        return error(request, 413, f"request body over the studio's limit of {settings.guard.max_body:,} bytes")

    @app.exception_handler(Exception)
    async def _internal(request: Request, e: Exception):
        traceback.print_exception(e, file=sys.stderr)  # for the server's log; the client gets one line
        return error(request, 500, f"internal error: {type(e).__name__}: {e}")

    from sd_lora.studio import routes_a1111, routes_data, routes_gen, routes_runs

    for module in (routes_runs, routes_data, routes_gen, routes_a1111):
        app.include_router(module.router(studio, page))

    @app.get("/")
    async def home():
        return RedirectResponse("/runs", status_code=303)

    return SecurityMiddleware(app, settings.guard)


def studio_of(app) -> Studio:
    """The Studio behind an app made by create_app (tests reach the queue through it)."""
    inner = getattr(app, "app", app)
    return inner.state.studio
