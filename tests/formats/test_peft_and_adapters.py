"""peft adapter directories, SDXL name mapping on the tiny UNet, and adapters usable with set_adapters / fuse."""

from __future__ import annotations

import pytest
import torch

from sd_lora.formats import apply_adapter_file, diffusers_to_sgm, save_adapter, sgm_to_diffusers
from sd_lora.models.tiny import build_tiny_pipeline
from tests.formats.conftest import add_adapters, image


def test_sdxl_names_both_directions_on_the_tiny_unet():
    pipe = build_tiny_pipeline("sdxl", seed=0)
    config = pipe.unet.config
    seen = set()
    for name, module in pipe.unet.named_modules():
        if not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            continue
        sgm = diffusers_to_sgm(name, config)
        assert sgm_to_diffusers(sgm, config) == name
        seen.add(sgm)
    assert len(seen) == sum(isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) for m in pipe.unet.modules())
    # names whose SGM form is fixed by the layout (layers_per_block 2, as in the full-size UNet)
    assert diffusers_to_sgm("down_blocks.0.resnets.0.conv1", config) == "input_blocks.1.0.in_layers.2"
    assert diffusers_to_sgm("down_blocks.0.downsamplers.0.conv", config) == "input_blocks.3.0.op"
    assert diffusers_to_sgm("mid_block.resnets.1.time_emb_proj", config) == "middle_block.2.emb_layers.1"


def test_peft_directory_imports_with_its_scales(tmp_path):
    pipe = build_tiny_pipeline("sd1", seed=0)
    pipe.set_progress_bar_config(disable=True)
    add_adapters(pipe, "lora", preset="attn-mlp", text_encoders=False, rslora=True)
    trained = image(pipe)
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    directory = tmp_path / "peft" / "unet"
    directory.mkdir(parents=True)
    pipe.unet.peft_config["default"].save_pretrained(str(directory))
    save_file(get_peft_model_state_dict(pipe.unet, adapter_name="default"),
              str(directory / "adapter_model.safetensors"))
    fresh = build_tiny_pipeline("sd1", seed=0)
    fresh.set_progress_bar_config(disable=True)
    report = apply_adapter_file(fresh, tmp_path / "peft", "p")
    assert report.format == "peft-dir" and report.modules["unet"] > 0
    assert abs(image(fresh) - trained).max() < 1e-4


def test_applied_adapters_work_with_set_adapters_and_fuse(tmp_path):
    paths = []
    for i in range(2):
        source = build_tiny_pipeline("sd1", seed=0)
        comps = add_adapters(source, "lora", preset="attn", seed=10 * i, adapter_name=f"a{i}")
        path = tmp_path / f"a{i}.safetensors"
        save_adapter(path, comps, "sd1", unet_config=dict(source.unet.config), adapter_name=f"a{i}",
                     save_precision=torch.float32)
        paths.append(path)
    pipe = build_tiny_pipeline("sd1", seed=0)
    pipe.set_progress_bar_config(disable=True)
    base = image(pipe)
    for i, path in enumerate(paths):
        apply_adapter_file(pipe, path, f"x{i}")
    pipe.set_adapters(["x0", "x1"], adapter_weights=[1.0, 0.0])
    only_first = image(pipe)
    pipe.set_adapters(["x0", "x1"], adapter_weights=[0.5, 0.5])
    mixed = image(pipe)
    pipe.fuse_lora(adapter_names=["x0", "x1"])
    fused = image(pipe)
    assert abs(fused - mixed).max() < 1e-4
    pipe.unfuse_lora()
    assert abs(image(pipe) - mixed).max() < 1e-4
    pipe.set_adapters(["x0", "x1"], adapter_weights=[0.0, 0.0])
    assert abs(image(pipe) - base).max() < 1e-5
    assert abs(only_first - base).max() > 1e-3 and abs(mixed - only_first).max() > 1e-4


def test_same_adapter_name_twice_is_refused(tmp_path):
    from sd_lora.errors import SdLoraError

    source = build_tiny_pipeline("sd1", seed=0)
    comps = add_adapters(source, "lora", preset="attn", text_encoders=False)
    path = tmp_path / "a.safetensors"
    save_adapter(path, comps, "sd1", unet_config=dict(source.unet.config), save_precision=torch.float32)
    pipe = build_tiny_pipeline("sd1", seed=0)
    apply_adapter_file(pipe, path, "same")
    with pytest.raises(SdLoraError, match="already used"):
        apply_adapter_file(pipe, path, "same")


@pytest.mark.parametrize("method", ["loha", "lokr"])
def test_lycoris_adapters_follow_set_adapters_weights_and_fuse(tmp_path, method):
    source = build_tiny_pipeline("sd1", seed=0)
    source.set_progress_bar_config(disable=True)
    comps = add_adapters(source, method, preset="attn", text_encoders=False)
    trained = image(source)
    path = tmp_path / "l.safetensors"
    save_adapter(path, comps, "sd1", unet_config=dict(source.unet.config), save_precision=torch.float32)
    pipe = build_tiny_pipeline("sd1", seed=0)
    pipe.set_progress_bar_config(disable=True)
    base = image(pipe)
    apply_adapter_file(pipe, path, "l")
    pipe.set_adapters(["l"], adapter_weights=[0.0])
    assert abs(image(pipe) - base).max() < 1e-5
    pipe.set_adapters(["l"], adapter_weights=[1.0])
    assert abs(image(pipe) - trained).max() < 1e-4
    pipe.fuse_lora(adapter_names=["l"])
    assert abs(image(pipe) - trained).max() < 1e-4
    pipe.unfuse_lora()
    pipe.set_adapters(["l"], adapter_weights=[0.0])
    assert abs(image(pipe) - base).max() < 1e-5
