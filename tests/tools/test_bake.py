"""bake: the baked checkpoint renders what base + adapters (unfused) render; layouts stay the original ones."""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open

from sd_lora.errors import SdLoraError
from sd_lora.tools import bake_adapters
from tests.tools.conftest import UNET_ATTN, image, save_random_adapter, tiny
from tests.tools.conftest import full_size_meta as _full_size_meta


def _single_file(family, path):
    from sd_lora.models.families.unet_single_file import save_single_file

    return save_single_file(tiny(family), path, family)


def _load_single(path):
    from sd_lora.models.families.unet_single_file import load_single_file_pipeline

    pipe, _ = load_single_file_pipeline(str(path))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _unfused(pipe, loras):
    from sd_lora.inference.adapters import AdapterSet

    AdapterSet(pipe).activate(loras)
    return image(pipe)


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_single_file_bake_renders_like_unfused(family, tmp_path):
    ckpt = _single_file(family, tmp_path / "base.safetensors")
    pipe = tiny(family)
    locon = save_random_adapter(pipe, tmp_path / "locon.safetensors", family, kind="locon", seed=1)
    loha = save_random_adapter(pipe, tmp_path / "loha.safetensors", family, kind="loha", seed=2, text_encoder=False)
    loras = [(locon, 0.8), (loha, 0.5)]
    out = tmp_path / "baked.safetensors"
    report = bake_adapters(ckpt, [f"{locon}:0.8", f"{loha}:0.5"], out, save_precision="fp32")
    assert report.route == "stream"
    with safe_open(str(ckpt), "pt") as a, safe_open(str(out), "pt") as b:
        assert list(a.keys()) == list(b.keys())
        assert all(a.get_slice(k).get_shape() == b.get_slice(k).get_shape() for k in a.keys())
        changed = [k for k in a.keys() if not torch.equal(a.get_tensor(k), b.get_tensor(k))]
    assert any("in_proj_weight" in k for k in changed) == (family == "sdxl")  # OpenCLIP q/k/v rows
    base_image = image(_load_single(ckpt))
    want = _unfused(_load_single(ckpt), loras)
    got = image(_load_single(out))
    assert abs(want - base_image).max() > 1e-3
    assert abs(got - want).max() < 1e-4


def test_diffusers_folder_bake_dora_lokr(tmp_path):
    from sd_lora.models.load import load_pipeline

    base_dir = tmp_path / "base"
    tiny("sd2").save_pretrained(str(base_dir))
    pipe = tiny("sd2")
    dora = save_random_adapter(pipe, tmp_path / "dora.safetensors", "sd2", kind="dora", seed=3)
    lokr = save_random_adapter(pipe, tmp_path / "lokr.safetensors", "sd2", kind="lokr", seed=4,
                               text_encoder=False, unet_targets=UNET_ATTN)
    out_dir, out_file = tmp_path / "baked", tmp_path / "baked.safetensors"
    bake_adapters(str(base_dir), [(dora, 0.6)], out_dir, save_precision="fp32")
    bake_adapters(str(base_dir), [(lokr, 0.7)], out_file, save_precision="fp32")
    ref = load_pipeline(str(base_dir))[0]
    ref.set_progress_bar_config(disable=True)
    want_dora = _unfused(ref, [(dora, 0.6)])  # peft's DoRA at weight 0.6: the magnitude still applies in full
    baked = load_pipeline(str(out_dir))[0]
    baked.set_progress_bar_config(disable=True)
    assert abs(image(baked) - want_dora).max() < 1e-4
    ref2 = load_pipeline(str(base_dir))[0]
    ref2.set_progress_bar_config(disable=True)
    want_lokr = _unfused(ref2, [(lokr, 0.7)])
    assert abs(image(_load_single(out_file)) - want_lokr).max() < 1e-4


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_full_size_modules_map_to_the_original_layout(family):
    """Every module a full-preset LoRA adapts (UNet + text encoders) maps onto a tensor of the published
    original layout with the right shape (meta device: no memory)."""
    from sd_lora.models.families import unet_architectures as architectures
    from sd_lora.models.families.unet_original_layout import pipeline_to_original
    from sd_lora.tools.bake_layout import plan_original
    from sd_lora.tools.extract import target_modules

    pipe = _full_size_meta(family)
    shapes = {k: tuple(v.shape) for k, v in pipeline_to_original(pipe, family).items()}
    comps = {"unet": pipe.unet, "text_encoder": pipe.text_encoder}
    if family == "sdxl":
        comps["text_encoder_2"] = pipe.text_encoder_2
    modules = {}
    for component, model in comps.items():
        for path, layer in target_modules(model, component, conv=True):
            key = path if component == "unet" or path.startswith("text_model.") else "text_model." + path
            modules[(component, key)] = tuple(layer.weight.shape)
    assert len(modules) > 300
    plan = plan_original(list(modules), shapes, family, architectures.unet_config(family), modules)
    assert len(plan) == len(modules)
    assert len({(t.key, t.rows) for t in plan.values()}) == len(plan)  # one tensor (block) per module


def test_bad_inputs(tmp_path):
    ckpt = _single_file("sd1", tmp_path / "base.safetensors")
    xl = save_random_adapter(tiny("sdxl"), tmp_path / "xl.safetensors", "sdxl", seed=5)
    sd1 = save_random_adapter(tiny("sd1"), tmp_path / "sd1.safetensors", seed=6)
    out = tmp_path / "o.safetensors"
    with pytest.raises(SdLoraError, match="SDXL"):
        bake_adapters(ckpt, [xl], out)
    with pytest.raises(SdLoraError, match="no such file"):
        bake_adapters(ckpt, [tmp_path / "missing.safetensors"], out)
    with pytest.raises(SdLoraError, match="also an input"):
        bake_adapters(ckpt, [sd1], ckpt)
    with pytest.raises(SdLoraError, match="does not exist|no such"):
        bake_adapters(tmp_path / "nope.safetensors", [sd1], out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.safetensors", "sd1.safetensors", "xl.safetensors"]
