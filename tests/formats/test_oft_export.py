"""OFT / BOFT: the base at step 0, files that reproduce peft's merged weights, the round trip, and the refusals."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

from sd_lora.adapters import adapter_spec, build_peft_config, inject
from sd_lora.config.load import config_from_dict
from sd_lora.config.schema import NetworkConfig
from sd_lora.errors import SdLoraError
from sd_lora.formats import apply_adapter_file, save_adapter
from sd_lora.formats.names import module_to_community
from tests.formats.conftest import image

METHODS = {"oft": dict(type="oft", preset="attn-mlp", oft_block_size=8),
           "oft-constrained": dict(type="oft", preset="attn-mlp", oft_block_size=0, oft_blocks=4, oft_constraint=1e-2),
           "boft": dict(type="boft", preset="full", oft_block_size=4)}


def _orthogonal(pipe, network: dict, seed: int = 0, randomise: bool = True) -> dict:
    comps = {"unet": pipe.unet, "text_encoder": pipe.text_encoder}
    g = torch.Generator().manual_seed(seed)
    for name, model in comps.items():
        net = NetworkConfig(**{**network, "preset": network["preset"] if name == "unet" else "attn"})
        inject(model, build_peft_config(net.type, adapter_spec(net, model, "unet" if name == "unet" else "text_encoder")))
        if randomise:
            for n, p in model.named_parameters():
                if p.requires_grad:
                    with torch.no_grad():
                        p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g) if "boft_s" in n
                               else 0.05 * torch.randn(p.shape, generator=g))
    return comps


def _merged(model) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    from peft.tuners.tuners_utils import BaseTunerLayer

    out = {}
    for path, layer in model.named_modules():
        if isinstance(layer, BaseTunerLayer):
            before = layer.get_base_layer().weight.detach().clone()
            layer.merge()
            out[path] = (before, layer.get_base_layer().weight.detach().clone())
            layer.unmerge()
    return out


@pytest.mark.parametrize("method", METHODS)
def test_fresh_adapter_is_the_base(fresh, method):
    pipe = fresh("sd1")
    base = image(pipe)
    _orthogonal(pipe, METHODS[method], randomise=False)
    # identity rotations; BOFT's permutation products round in the last bit of float32
    assert abs(image(pipe) - base).max() < 1e-5


@pytest.mark.parametrize("method", METHODS)
def test_file_weight_update_equals_peft_merged_weights(fresh, tmp_path, method):
    pipe = fresh("sd1")
    comps = _orthogonal(pipe, METHODS[method])
    path = tmp_path / "o.safetensors"
    report = save_adapter(path, comps, "sd1", unet_config=dict(pipe.unet.config), save_precision=torch.float32)
    tensors = load_file(str(path))
    for component, model in comps.items():
        merged = _merged(model)
        assert report.trained[component] == len(merged) > 0
        for module_path, (before, after) in merged.items():
            name = module_to_community(component, ("text_model." if component != "unet" else "") + module_path, "sd1",
                                       dict(pipe.unet.config))
            down, up = tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"]
            scale = tensors[f"{name}.alpha"].item() / down.shape[0]
            delta = (up.flatten(1) @ down.flatten(1) * scale).reshape(before.shape)
            assert (after - before).abs().max() > 1e-4  # the module really is changed
            assert torch.allclose(before + delta, after, atol=1e-4, rtol=0)


@pytest.mark.parametrize("method", ["oft", "boft"])
def test_file_round_trips_through_the_importer_with_the_same_images(fresh, tmp_path, method):
    pipe = fresh("sd1")
    comps = _orthogonal(pipe, METHODS[method], seed=2)
    trained = image(pipe)
    path = tmp_path / "o.safetensors"
    save_adapter(path, comps, "sd1", unet_config=dict(pipe.unet.config), save_precision=torch.float32)
    ours = fresh("sd1")
    apply_adapter_file(ours, path, "mine")
    assert abs(image(ours) - trained).max() < 1e-4


def test_oft_on_3x3_convs_is_refused(fresh):
    pipe = fresh("sd1")
    net = NetworkConfig(type="oft", preset="full", oft_block_size=8)
    with pytest.raises(SdLoraError, match="network.type = 'oft': .*3x3 convs .* use preset 'attn' or 'attn-mlp'"):
        build_peft_config("oft", adapter_spec(net, pipe.unet, "unet"))


def test_lycoris_oft_blocks_file_is_refused_by_name(fresh, tmp_path):
    pipe = fresh("sd1")
    name = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"
    path = tmp_path / "lyco_oft.safetensors"
    save_file({f"{name}.oft_blocks": torch.zeros(4, 8, 8), f"{name}.alpha": torch.tensor(0.0)}, str(path))
    with pytest.raises(SdLoraError, match="oft_blocks.*output features.*input features"):
        apply_adapter_file(pipe, path, "x")


@pytest.mark.parametrize("network, message", [
    ({"oft_block_size": 8, "oft_blocks": 2}, "set exactly one of them"),
    ({"oft_block_size": 0, "oft_blocks": 0}, "set exactly one of them"),
    ({"type": "boft", "oft_constraint": 0.1}, "network.oft_constraint: .* type 'oft' only"),
    ({"type": "boft", "boft_butterfly_factor": 0}, "network.boft_butterfly_factor: must be at least 1"),
    ({"preset": "full"}, "network.preset: 'full' adapts 3x3 convs, which type 'oft' cannot save exactly"),
])
def test_bad_oft_keys_are_named(network, message):
    with pytest.raises(SdLoraError, match=message):
        config_from_dict({"network": {"type": "oft", **network}})


def test_bake_resize_and_merge_take_the_files_like_any_lora(fresh, tmp_path):
    from sd_lora.cli.main import main
    from sd_lora.models.load import load_pipeline
    from sd_lora.tools import bake_adapters

    base_dir = tmp_path / "base"
    fresh("sd1").save_pretrained(str(base_dir))
    pipe = fresh("sd1")
    comps = _orthogonal(pipe, METHODS["boft"], seed=4)
    trained = image(pipe)
    oft = tmp_path / "boft.safetensors"
    save_adapter(oft, comps, "sd1", unet_config=dict(pipe.unet.config), save_precision=torch.float32)
    bake_adapters(str(base_dir), [(oft, 1.0)], tmp_path / "baked", save_precision="fp32")
    baked = load_pipeline(str(tmp_path / "baked"))[0]
    baked.set_progress_bar_config(disable=True)
    assert abs(image(baked) - trained).max() < 1e-4
    assert main(["resize", str(oft), "-o", str(tmp_path / "small.safetensors"), "--rank", "4"]) == 0
    assert max(v.shape[0] for k, v in load_file(str(tmp_path / "small.safetensors")).items()
               if k.endswith("lora_down.weight")) == 4
    assert main(["merge", f"{oft}:0.5", f"{tmp_path / 'small.safetensors'}:0.5", "-o",
                 str(tmp_path / "merged.safetensors")]) == 0
