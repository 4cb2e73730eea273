"""`sd-lora studio [--data-root DIR ...] [--port 7860] [--listen --auth USER:PASSWORD | --token TOKEN]`."""

from __future__ import annotations

import os
from pathlib import Path

from sd_lora.errors import SdLoraError

__all__ = ["add_parser", "run", "settings_from_args"]


def add_parser(subparsers, name: str) -> None:
    p = subparsers.add_parser(name, help="local web app: datasets, a queue of training runs, live progress, generation",
                              description="The sd-lora studio: a local web app with an AUTOMATIC1111-compatible API. "
                                          "It binds 127.0.0.1 unless --listen is given (which needs --auth or --token).")
    p.add_argument("--data-root", action="append", default=[], metavar="DIR",
                   help="a folder the studio may read and write (datasets, captions); repeatable")
    p.add_argument("--lora-dir", action="append", default=[], metavar="DIR",
                   help="a folder of LoRA files to list and generate with (read only); repeatable")
    p.add_argument("--model", action="append", default=[], metavar="MODEL",
                   help="a base model for generation and the A1111 API (default: builtin:tiny); repeatable")
    p.add_argument("--home", default=os.environ.get("SD_LORA_STUDIO_HOME", "~/.sd-lora/studio"),
                   help="where the studio keeps its database and runs (default: ~/.sd-lora/studio)")
    p.add_argument("--port", type=int, default=7860)
    p.add_argument("--listen", action="store_true",
                   help="answer on all network interfaces (needs --auth or --token); default: 127.0.0.1 only")
    p.add_argument("--auth", metavar="USER:PASSWORD", help="HTTP Basic credentials every request must carry")
    p.add_argument("--token", help="a token every request must carry (Bearer header, or ?token= once in a browser)")
    p.add_argument("--max-body-mb", type=float, default=32.0, help="largest request body accepted (default 32 MB)")
    p.add_argument("--concurrency", type=int, default=1, help="runs trained at the same time (default 1)")
    p.add_argument("--presets", metavar="DIR", help="folder of preset TOML files (default: the repo's train_configs/)")
    p.add_argument("--device", default="auto", help="device for generation: auto, cpu, cuda, cuda:N")


def settings_from_args(args):
    from sd_lora.studio.app import Settings
    from sd_lora.studio.security import Guard

    user = password = None
    if args.auth is not None:
        user, sep, password = args.auth.partition(":")
        if not sep or not user or not password:
            raise SdLoraError("--auth: expected USER:PASSWORD, both non-empty")
    if args.token is not None and len(args.token) < 16:
        raise SdLoraError("--token: use at least 16 characters (e.g. `python -c \"import secrets; print(secrets.token_urlsafe())\"`)")
    if args.listen and user is None and not args.token:
        raise SdLoraError("--listen exposes the studio (and your data roots) to the network: give --auth USER:PASSWORD "
                          "or --token TOKEN too, or reach a 127.0.0.1 studio through an SSH tunnel")
    if not 1 <= args.port <= 65535:
        raise SdLoraError(f"--port: expected 1-65535, got {args.port}")
    if args.max_body_mb <= 0:
        raise SdLoraError("--max-body-mb: must be positive")
    if args.concurrency < 1:
        raise SdLoraError("--concurrency: must be at least 1")
    for folder in args.lora_dir:
        if not Path(folder).expanduser().is_dir():
            raise SdLoraError(f"--lora-dir {folder}: not a folder")
    presets = Path(args.presets) if args.presets else Path(__file__).resolve().parents[2] / "train_configs"
    guard = Guard(loopback_only=not args.listen, user=user, password=password, token=args.token,
                  max_body=int(args.max_body_mb * (1 << 20)))
    return Settings(home=Path(args.home).expanduser(), data_roots=[Path(d) for d in args.data_root],
                    lora_dirs=[Path(d).expanduser().resolve() for d in args.lora_dir],
                    models=args.model or ["builtin:tiny"], presets_dir=presets, guard=guard,
                    concurrency=args.concurrency, device=args.device)


def run(args) -> int:
    try:
        import uvicorn

        from sd_lora.studio.app import create_app
    except ModuleNotFoundError as e:
        raise SdLoraError(f"the studio needs {e.name}: pip install 'sd-lora[studio]'") from None
    settings = settings_from_args(args)
    app = create_app(settings)
    host = "0.0.0.0" if args.listen else "127.0.0.1"
    print(f"sd-lora studio: http://{'<this machine>' if args.listen else '127.0.0.1'}:{args.port}/  "
          f"(home {settings.home}; data roots: {', '.join(str(d) for d in settings.data_roots) or 'none'})", flush=True)
    uvicorn.run(app, host=host, port=args.port, log_level="warning")
    return 0
