"""Shared helpers of the reliability suite: run the real CLI in a subprocess, check that a user error is one
clear message (no traceback), and snapshot folders to prove nothing written before was lost or changed.

Every case runs offline on the tiny models (`builtin:tiny`, or tiny SD1/SDXL files made here once per
session) and reads nothing outside the repository and its own temporary folders.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
# Drop the capabilities that let root read and write any file, so permission errors happen as for a user.
NO_DAC = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search",
          "--inh-caps", "-dac_override,-dac_read_search"]


def cli_env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "TRANSFORMERS_", "DIFFUSERS_"))}
    env.update(PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_HOME=str(tmp / ".hf"),
               DIFFUSERS_VERBOSITY="error", TRANSFORMERS_VERBOSITY="error", OMP_NUM_THREADS="1",
               PYTHONDONTWRITEBYTECODE="1")
    return env


def run_cli(*args, cwd: Path, prefix: list[str] = (), timeout: float = 120) -> subprocess.CompletedProcess:
    """`python -m sd_lora ARGS` in `cwd`, as a user runs it (prefix: e.g. NO_DAC)."""
    cmd = [*prefix, sys.executable, "-m", "sd_lora", *map(str, args)]
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=cli_env(Path(cwd)), timeout=timeout)


def run_main(*args, cwd: Path) -> subprocess.CompletedProcess:
    """The CLI's `main()` in this process, in `cwd`, with its stdout and stderr captured: for cases about what a
    command does rather than about its process (no interpreter start, no torch import per call). An exception
    that escapes `main()` is printed as a traceback into the captured stderr, as the interpreter would."""
    import contextlib
    import io
    import traceback

    from sd_lora.cli.main import main

    out, err, here = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main([str(a) for a in args])
            except SystemExit as e:  # argparse's usage errors
                code = e.code if isinstance(e.code, int) else 2
            except Exception:
                traceback.print_exc()
                code = 1
    finally:
        os.chdir(here)
    return subprocess.CompletedProcess(list(args), code, out.getvalue(), err.getvalue())


def assert_user_error(result: subprocess.CompletedProcess, command: str, *needles: str, code: int = 2) -> str:
    """Exit `code`, no traceback, exactly one `sd-lora COMMAND: error:` message holding every needle."""
    err = result.stderr
    assert result.returncode == code, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{err}"
    assert "Traceback" not in err, err
    assert err.count(f"sd-lora {command}: error:") == 1, err
    message = err[err.index(f"sd-lora {command}: error:"):]
    for needle in needles:
        assert needle in message, f"{needle!r} not in:\n{message}"
    return message


def assert_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert "Traceback" not in result.stderr, result.stderr


def snapshot(folder: Path) -> dict[str, str]:
    """{relative path: sha256} of every file under `folder` (links as their target text)."""
    out = {}
    for path in sorted(Path(folder).rglob("*")):
        rel = str(path.relative_to(folder))
        if path.is_symlink():
            out[rel] = "link:" + os.readlink(path)
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_dir():
            out[rel] = "dir"
    return out


def assert_unchanged(before: dict[str, str], folder: Path) -> None:
    after = snapshot(folder)
    assert after == before, {"added": sorted(set(after) - set(before)), "removed": sorted(set(before) - set(after)),
                             "changed": sorted(k for k in set(after) & set(before) if after[k] != before[k])}


def write_image(path: Path, size=(32, 32), colour=(200, 40, 40), caption: str | bytes | None = "a red square"):
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    if caption is not None:
        cap = path.with_suffix(".txt")
        cap.write_bytes(caption if isinstance(caption, bytes) else caption.encode("utf-8"))
    return path


@pytest.fixture
def dataset(tmp_path):
    """A folder of three good 32 px images with captions (data.resolution=32 suits it)."""
    folder = tmp_path / "data"
    for i in range(3):
        write_image(folder / f"{i}.png", colour=(60 * i, 40, 200 - 50 * i))
    return folder


def dry_run(folder: Path, cwd: Path, *extra, prefix=()):
    return run_cli("train", "--set", f"data.dir={folder}", "--set", "data.resolution=32", *extra, "--dry-run",
                   cwd=cwd, prefix=prefix)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> Path:
    """`tiny0/` and `tiny1/`: the SD1 folders `sd-lora make-tiny --seed 0|1` writes, made once in-process (the
    cases that need a model folder are not about make-tiny's process; copy one to change it)."""
    from sd_lora.models.tiny import save_tiny_pipeline

    root = tmp_path_factory.mktemp("tiny_models")
    for seed in (0, 1):
        save_tiny_pipeline(root / f"tiny{seed}", family="sd1", seed=seed)
    return root


@pytest.fixture(scope="session")
def adapter_files(tmp_path_factory):
    """Tiny adapter files made once: an SD1 LoRA and DoRA for builtin:tiny, a tiny SDXL model folder and a
    LoRA for it (UNet only; random non-zero up weights so each one changes the image)."""
    import torch

    from sd_lora.adapters import adapter_spec, build_peft_config, inject
    from sd_lora.config.schema import NetworkConfig
    from sd_lora.formats.export import save_adapter
    from sd_lora.models.load import load_pipeline
    from sd_lora.models.tiny import save_tiny_pipeline

    root = tmp_path_factory.mktemp("adapters")

    def make(model: str, family: str, name: str, dora: bool = False) -> Path:
        pipe, _ = load_pipeline(model)
        net = NetworkConfig(rank=4, alpha=4, dora=dora)
        inject(pipe.unet, build_peft_config("lora", adapter_spec(net, pipe.unet, "unet")), adapter_name="default")
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for n, p in pipe.unet.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        save_adapter(root / name, {"unet": pipe.unet}, family, unet_config=dict(pipe.unet.config),
                     save_precision=torch.float32)
        return root / name

    sdxl = save_tiny_pipeline(root / "tiny_sdxl", family="sdxl", seed=0)
    return {"sd1": make("builtin:tiny", "sd1", "sd1.safetensors"),
            "dora": make("builtin:tiny", "sd1", "dora.safetensors", dora=True),
            "sdxl_model": Path(sdxl), "sdxl": make(str(sdxl), "sdxl", "sdxl.safetensors")}
