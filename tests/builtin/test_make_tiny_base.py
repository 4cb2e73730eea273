"""scripts/make_tiny_base.py: deterministic given the seed, and --resume reproduces an uninterrupted run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
TINY_ARGS = ["--size", "32", "--vae-steps", "2", "--vae-batch", "2", "--batch", "2", "--ckpt-every", "1",
             "--log-every", "1", "--sample-steps", "0", "--threads", "1", "--device", "cpu"]


@pytest.fixture(scope="module")
def script():
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import make_tiny_base
    finally:
        sys.path.pop(0)
    return make_tiny_base


def _weights(out: Path) -> dict:
    found = {}
    for name in ("unet/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.safetensors",
                 "text_encoder/model.safetensors"):
        found.update({f"{name}:{k}": v for k, v in load_file(str(out / name)).items()})
    return found


def test_resumed_run_equals_uninterrupted_run_and_loads(script, tmp_path, capsys):
    from diffusers import StableDiffusionPipeline

    a, b = tmp_path / "a", tmp_path / "b"
    assert script.main([*TINY_ARGS, "--steps", "3", "--work", str(a / "work"), "--out", str(a / "out")]) == 0
    # Interrupted after one UNet step, then continued to the same total.
    assert script.main([*TINY_ARGS, "--steps", "1", "--work", str(b / "work"), "--out", str(b / "out")]) == 0
    assert script.main([*TINY_ARGS, "--steps", "3", "--work", str(b / "work"), "--out", str(b / "out"),
                        "--resume"]) == 0
    assert "resumed: phase unet step 1" in capsys.readouterr().out
    wa, wb = _weights(a / "out"), _weights(b / "out")
    assert wa.keys() == wb.keys()
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    pipe = StableDiffusionPipeline.from_pretrained(str(a / "out"), local_files_only=True)
    assert pipe.vae.config.scaling_factor != 1.0  # measured from the trained autoencoder's latents


def test_a_different_seed_gives_different_weights(script, tmp_path):
    outs = []
    for seed in ("0", "1"):
        d = tmp_path / seed
        script.main([*TINY_ARGS, "--steps", "1", "--seed", seed, "--work", str(d / "work"), "--out", str(d / "out")])
        outs.append(_weights(d / "out"))
    assert any(not torch.equal(outs[0][k], outs[1][k]) for k in outs[0])
