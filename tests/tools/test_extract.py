"""extract: tuned = base + a known rank-4 delta on some modules; rank-4 extraction recovers it, skips the rest."""

from __future__ import annotations

import copy

import pytest
import torch

from sd_lora.errors import SdLoraError
from sd_lora.tools import extract_adapter
from tests.tools.conftest import delta, modules_of, tiny

_PATHS = ["down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q",
          "up_blocks.1.attentions.0.transformer_blocks.0.ff.net.2",
          "down_blocks.1.resnets.0.conv1"]  # the last: a 3x3 conv (LoCon)
CHANGED_UNET = {p: "lora_unet_" + p.replace(".", "_") for p in _PATHS}
CHANGED_TE = {"encoder.layers.1.self_attn.v_proj": "lora_te_text_model_encoder_layers_1_self_attn_v_proj"}


def _add_rank4(model, path: str, seed: int) -> torch.Tensor:
    """Add a random rank-4 delta (scaled to a max of ~0.1) to a layer's weight; returns it flattened."""
    layer = dict(model.named_modules())[path]
    g = torch.Generator().manual_seed(seed)
    out, flat = layer.weight.shape[0], layer.weight[0].numel()
    d = torch.randn(out, 4, generator=g) @ torch.randn(4, flat, generator=g)
    d = d * (0.1 / d.abs().max())
    with torch.no_grad():
        layer.weight += d.reshape(layer.weight.shape)
    return d


@pytest.fixture(scope="module")
def models():
    base = tiny("sd1")
    tuned = copy.deepcopy(base)
    te = tuned.text_encoder
    te_root = te.text_model if hasattr(te, "text_model") else te
    deltas = {name: _add_rank4(tuned.unet, path, i) for i, (path, name) in enumerate(CHANGED_UNET.items())}
    deltas.update({name: _add_rank4(te_root, path, 10) for path, name in CHANGED_TE.items()})
    # a change below --min-diff on another module: skipped
    with torch.no_grad():
        dict(tuned.unet.named_modules())["mid_block.attentions.0.transformer_blocks.0.attn2.to_v"].weight += 1e-4
    return base, tuned, deltas


def test_recovers_the_delta_and_skips_untouched(models, tmp_path):
    base, tuned, deltas = models
    out = tmp_path / "x.safetensors"
    report = extract_adapter(base, tuned, out, rank=4, conv_rank=4, save_precision="fp32")
    got = modules_of(out)
    assert set(got) == set(deltas)
    for name, want in deltas.items():
        assert got[name]["lora_down.weight"].shape[0] == 4
        assert float((delta(got[name]) - want).abs().max()) <= 1e-4, name
    assert got[CHANGED_UNET["down_blocks.1.resnets.0.conv1"]]["lora_down.weight"].shape[-2:] == (3, 3)
    assert report.extracted == {"unet": 3, "text_encoder": 1}
    assert report.skipped["unet"] > 20 and report.skipped["text_encoder"] > 5 and report.text_encoder


def test_text_encoder_modes_and_no_conv(models, tmp_path):
    base, tuned, deltas = models
    off = tmp_path / "off.safetensors"
    report = extract_adapter(base, tuned, off, rank=4, text_encoder="off", save_precision="fp32")
    assert set(modules_of(off)) == {CHANGED_UNET[p] for p in CHANGED_UNET if "resnets" not in p}
    assert not report.text_encoder
    on = tmp_path / "on.safetensors"
    extract_adapter(base, tuned, on, rank=2, text_encoder="on", min_diff=0.5)  # min_diff skips all UNet modules
    names = set(modules_of(on))
    assert not any(n.startswith("lora_unet_") for n in names)
    assert CHANGED_TE["encoder.layers.1.self_attn.v_proj"] in names and len(names) == 1  # identical modules never


def test_bad_inputs(models, tmp_path):
    base, tuned, _ = models
    with pytest.raises(SdLoraError, match="one family"):
        extract_adapter(base, tiny("sdxl"), tmp_path / "o.safetensors", rank=4)
    with pytest.raises(SdLoraError, match="nothing to extract"):
        extract_adapter(base, copy.deepcopy(base), tmp_path / "o.safetensors", rank=4)
    with pytest.raises(SdLoraError, match="positive"):
        extract_adapter(base, tuned, tmp_path / "o.safetensors", rank=0)
    with pytest.raises(SdLoraError, match="does not exist|no such"):
        extract_adapter(str(tmp_path / "missing"), tuned, tmp_path / "o.safetensors", rank=4)
    assert not list(tmp_path.iterdir())


def test_extract_from_hub_ids_in_the_hf_cache(models, tmp_path):
    """`--base org/name --tuned org/name` load from a Hugging Face cache in the hub's own layout, offline."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.models.hub_cache import add_to_hub_cache

    base, tuned, deltas = models
    home = tmp_path / "hf"
    for name, pipe in (("base", base), ("tuned", tuned)):
        pipe.save_pretrained(tmp_path / name)
        add_to_hub_cache(home, f"tiny-org/{name}", tmp_path / name)
    out = tmp_path / "hub.safetensors"
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo), "HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    done = subprocess.run([sys.executable, "-m", "sd_lora", "extract", "--base", "tiny-org/base", "--tuned",
                           "tiny-org/tuned", "-o", str(out), "--rank", "4", "--conv-rank", "4", "--save-precision",
                           "fp32"], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    got = modules_of(out)
    assert set(got) == set(deltas)
    for name, want in deltas.items():
        assert float((delta(got[name]) - want).abs().max()) <= 1e-4, name
