"""Every family and network type trains, exports in the community format and loads back."""

import pytest
import torch
from safetensors import safe_open

from sd_lora.models.load import load_pipeline
from sd_lora.train.recipe import run_training
from tests.train.conftest import tiny_config


def _image(pipe, **kw):
    return pipe("a red square", num_inference_steps=2, height=32, width=32, output_type="np",
                generator=torch.Generator().manual_seed(5), **kw).images


def test_sdxl_trains_exports_and_loads_in_diffusers_sdxl_pipeline(tiny_sdxl_dir, tiny_dataset, tmp_path):
    cfg = tiny_config(tiny_sdxl_dir, tiny_dataset, tmp_path / "out", network={"train_text_encoder": True},
                      train={"max_steps": 20, "learning_rate": 5e-3}, output={"save_precision": "fp32"})
    result = run_training(cfg)
    with safe_open(str(result.adapter_path), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert any(k.startswith("lora_unet_input_blocks_") for k in keys)  # original SGM block names
    assert any(k.startswith("lora_te1_text_model_") for k in keys) and any(k.startswith("lora_te2_text_model_") for k in keys)
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
    pipe, _ = load_pipeline(str(tiny_sdxl_dir))
    assert type(pipe).__name__ == "StableDiffusionXLPipeline"
    base = _image(pipe)
    pipe.load_lora_weights(str(result.adapter_path))
    modules = {n.rsplit(".lora_A", 1)[0] for c in (pipe.unet, pipe.text_encoder, pipe.text_encoder_2)
               for n, _ in c.named_parameters() if ".lora_A." in n}
    assert len(modules) == sum(result.coverage.trained.values())  # every trained module applied
    assert abs(_image(pipe) - base).max() > 1e-4


@pytest.mark.parametrize("network", [
    dict(type="lora"), dict(type="lora", preset="full", conv_rank=2, conv_alpha=1.0), dict(type="lora", dora=True),
    dict(type="lora", rslora=True), dict(type="loha"), dict(type="lokr"),
], ids=["lora", "locon", "dora", "rslora", "loha", "lokr"])
def test_every_network_type_round_trips_and_fuses(tiny_sd1_dir, tiny_dataset, tmp_path, network):
    from sd_lora.formats import apply_adapter_file

    cfg = tiny_config(tiny_sd1_dir, tiny_dataset, tmp_path / "out", network={"rank": 4, "alpha": 4.0, **network},
                      train={"max_steps": 5, "learning_rate": 2e-2}, output={"save_precision": "fp32"})
    result = run_training(cfg)
    assert result.coverage.complete
    pipe, _ = load_pipeline(str(tiny_sd1_dir))
    base = _image(pipe)
    apply_adapter_file(pipe, result.adapter_path, "trained")
    unfused = _image(pipe)
    assert abs(unfused - base).max() > 1e-5  # the trained adapter is in the forward path
    pipe.fuse_lora()
    fused = _image(pipe)
    assert abs(fused - unfused).max() < 1e-3
