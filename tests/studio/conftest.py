"""Studio fixtures: a small dataset under a data root, apps on a test client, a real server in a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("fastapi", reason="the studio extra is not installed: pip install 'sd-lora[studio]'")

REPO = Path(__file__).resolve().parents[2]
COLORS = [(220, 40, 40), (40, 200, 60), (40, 60, 220), (230, 200, 30), (160, 40, 200), (30, 200, 200)]


def make_dataset(folder: Path, n: int = 6, size: int = 32) -> Path:
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        im = Image.new("RGB", (size, size), (10, 10, 30))
        ImageDraw.Draw(im).ellipse((4 + i % 3, 4, size - 4, size - 4 - i % 2), fill=COLORS[i % len(COLORS)])
        im.save(folder / f"{i:03d}.png")
        (folder / f"{i:03d}.txt").write_text(f"shape, {'red' if i % 2 else 'blue'}, night sky\n", encoding="utf-8")
    return folder


@pytest.fixture
def data_root(tmp_path) -> Path:
    root = tmp_path / "data"
    make_dataset(root / "shapes")
    return root


def tiny_run_form(steps: int = 6, **extra) -> dict:
    """New-run form fields of a fast tiny run on data/shapes (the rest stays at its defaults)."""
    form = {"model.pretrained": "builtin:tiny", "data.dir": "data/shapes", "data.resolution": "32",
            "network.rank": "4", "network.alpha": "4", "train.max_steps": str(steps), "train.batch_size": "2",
            "train.learning_rate": "0.001", "train.log_every_n_steps": "1", "output.name": "shapes",
            "output.log_with": "none"}
    form.update(extra)
    return form


@pytest.fixture
def make_client(tmp_path):
    """make_client(roots=[...], **settings) -> a TestClient (entered) on a new app; closed at the end."""
    from fastapi.testclient import TestClient

    from sd_lora.studio.app import Settings, create_app

    clients = []

    def make(roots=(), home=None, base_url="http://127.0.0.1", **settings):
        settings.setdefault("start_queue", False)
        settings.setdefault("presets_dir", REPO / "train_configs")
        app = create_app(Settings(home=home or tmp_path / "home", data_roots=list(roots), **settings))
        client = TestClient(app, base_url=base_url)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in reversed(clients):
        client.__exit__(None, None, None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    return env


class Server:
    """`sd-lora studio` as a real process on a free port (what a user runs)."""

    def __init__(self, args: list[str], log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "sd_lora", "studio", "--port", str(self.port), *args],
                                         stdout=out, stderr=subprocess.STDOUT, env=child_env(), cwd=str(log.parent))
        self.wait_ready()

    def wait_ready(self, timeout: float = 60) -> None:
        import urllib.request

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the studio exited with {self.proc.returncode}:\n{self.log.read_text()}")
            try:
                urllib.request.urlopen(self.url + "/sdapi/v1/options", timeout=2).read()
                return
            except OSError:
                time.sleep(0.2)
        raise AssertionError(f"the studio did not answer within {timeout} s:\n{self.log.read_text()}")

    def stop(self, sig=signal.SIGINT, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def start_server(tmp_path):
    servers = []

    def start(args: list[str]) -> Server:
        server = Server(args, tmp_path / f"studio-{len(servers)}.log")
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="session")
def lora_dir(tmp_path_factory) -> Path:
    """Two small trained adapters, `night` and `night_neg` (the same with its up weights negated)."""
    from safetensors.torch import load_file, save_file

    from sd_lora.cli.main import main

    base = tmp_path_factory.mktemp("loras")
    data = make_dataset(base / "data")
    assert main(["train", "--set", f"data.dir={data}", "--set", "data.resolution=32", "--set", "network.rank=4",
                 "--set", "train.max_steps=4", "--set", "train.batch_size=2", "--set", "train.learning_rate=0.01",
                 "--set", f"output.dir={base / 'out'}", "--set", "output.name=night", "--set", "output.log_with='none'",
                 "--set", "output.save_state_at_end=false"]) == 0
    folder = base / "loras"
    folder.mkdir()
    from safetensors import safe_open

    trained = base / "out" / "night.safetensors"
    with safe_open(str(trained), "pt") as f:
        metadata = f.metadata()
    tensors = load_file(trained)
    save_file(tensors, folder / "night.safetensors", metadata)
    save_file({k: -v if "lora_up" in k else v for k, v in tensors.items()}, folder / "night_neg.safetensors", metadata)
    return folder
