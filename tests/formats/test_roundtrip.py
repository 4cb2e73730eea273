"""save_adapter -> fresh pipeline (sd-lora's importer and diffusers' loader) -> the same images."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from sd_lora.formats import apply_adapter_file, save_adapter
from tests.formats.conftest import add_adapters, image


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
@pytest.mark.parametrize("fmt", ["community", "diffusers"])
def test_saved_adapter_reloads_with_identical_images(fresh, tmp_path, family, fmt):
    pipe = fresh(family)
    base = image(pipe)
    comps = add_adapters(pipe, "lora", preset="full")
    trained = image(pipe)
    assert abs(trained - base).max() > 1e-3
    path = tmp_path / "a.safetensors"
    report = save_adapter(path, comps, family, unet_config=dict(pipe.unet.config), save_precision=torch.float32,
                          format=fmt)
    assert report.complete and report.trained == report.applied
    assert set(report.trained) == set(comps)

    ours = fresh(family)
    applied = apply_adapter_file(ours, path, "mine")
    assert applied.modules == report.trained
    assert abs(image(ours) - trained).max() < 1e-4

    theirs = fresh(family)
    theirs.load_lora_weights(str(path), adapter_name="x")
    assert abs(image(theirs) - trained).max() < 1e-4


def test_diffusers_loader_applies_every_module_with_identical_values(fresh, tmp_path):
    pipe = fresh("sdxl")
    comps = add_adapters(pipe, "lora", preset="full")
    path = tmp_path / "a.safetensors"
    save_adapter(path, comps, "sdxl", unet_config=dict(pipe.unet.config), save_precision=torch.float32)
    other = fresh("sdxl")
    other.load_lora_weights(str(path), adapter_name="x")
    for name, model in comps.items():
        want = {k.replace(".default", ""): v for k, v in model.state_dict().items() if ".lora_" in k}
        got = {k.replace(".x", ""): v for k, v in getattr(other, name).state_dict().items() if ".lora_" in k}
        assert set(got) == set(want), name
        for k in want:
            assert torch.equal(got[k], want[k]), k
        for m_name, layer in getattr(other, name).named_modules():
            if hasattr(layer, "scaling") and "x" in layer.scaling:
                ref = dict(model.named_modules())[m_name]
                assert layer.scaling["x"] == pytest.approx(ref.scaling["default"]), m_name


def test_fp16_save_casts_every_tensor_including_alpha(fresh, tmp_path):
    pipe = fresh("sd1")
    comps = add_adapters(pipe, "lora", preset="attn")
    path = tmp_path / "a.safetensors"
    save_adapter(path, comps, "sd1", unet_config=dict(pipe.unet.config), save_precision=torch.float16)
    with safe_open(str(path), "pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
        assert any(k.endswith(".alpha") for k in f.keys())
    assert dtypes == {"F16"}


@pytest.mark.parametrize("fmt", ["community", "diffusers"])
def test_dora_round_trip_preserves_outputs(fresh, tmp_path, fmt):
    pipe = fresh("sd1")
    comps = add_adapters(pipe, "lora", preset="attn-mlp", dora=True)
    trained = image(pipe)
    path = tmp_path / "dora.safetensors"
    report = save_adapter(path, comps, "sd1", unet_config=dict(pipe.unet.config), save_precision=torch.float32,
                          format=fmt)
    assert report.adapter_type == "dora"
    with safe_open(str(path), "pt") as f:
        magnitude = ".dora_scale" if fmt == "community" else ".lora_magnitude_vector"
        assert any(k.endswith(magnitude) for k in f.keys())
    other = fresh("sd1")
    apply_adapter_file(other, path, "d")
    assert abs(image(other) - trained).max() < 1e-4


@pytest.mark.parametrize("method", ["loha", "lokr"])
def test_lycoris_adapters_save_and_reload_with_identical_images(fresh, tmp_path, method):
    pipe = fresh("sd1")
    comps = add_adapters(pipe, method, preset="full")
    trained = image(pipe)
    path = tmp_path / f"{method}.safetensors"
    report = save_adapter(path, comps, "sd1", unet_config=dict(pipe.unet.config), save_precision=torch.float32)
    assert report.adapter_type == method and report.complete
    with safe_open(str(path), "pt") as f:
        keys = list(f.keys())
    assert any((".hada_w1_a" if method == "loha" else ".lokr_w1") in k for k in keys)
    other = fresh("sd1")
    applied = apply_adapter_file(other, path, "l")
    assert applied.modules == report.trained
    assert abs(image(other) - trained).max() < 1e-4
