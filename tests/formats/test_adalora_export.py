"""AdaLoRA files: an ordinary community LoRA with per-module ranks whose ΔW is peft's, module by module."""

from __future__ import annotations

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from sd_lora.adapters import adapter_spec, build_peft_config, inject
from sd_lora.config.schema import NetworkConfig
from sd_lora.formats import apply_adapter_file, save_adapter
from sd_lora.formats.names import module_to_community
from tests.formats.conftest import image


def _adalora(pipe, seed=0):
    """AdaLoRA on the UNet (every Linear/Conv, 3x3 convs too) and the text encoder, with random triplets and some
    singular values masked to zero the way the allocator masks them (a whole module included)."""
    g = torch.Generator().manual_seed(seed)
    comps = {"unet": pipe.unet, "text_encoder": pipe.text_encoder}
    for name, model in comps.items():
        net = NetworkConfig(type="adalora", preset="full" if name == "unet" else "attn", alpha=3.0, init_r=6,
                            target_r=2)
        inject(model, build_peft_config("adalora", adapter_spec(net, model, "unet" if name == "unet" else "text_encoder")))
        for n, p in model.named_parameters():
            if ".default" in n and "lora_" in n:
                with torch.no_grad():
                    p.copy_(torch.randn(p.shape, generator=g) * (0.3 if "lora_E" in n else 0.2))
                    if "lora_E" in n:
                        masked = int(torch.randint(0, 6, (1,), generator=g))
                        p[torch.randperm(p.shape[0], generator=g)[:masked]] = 0
    pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn1.to_q.lora_E["default"].data.zero_()
    return comps


def _merged_deltas(model) -> dict[str, torch.Tensor]:
    """peft's own merge, module by module: the reference the file must reproduce."""
    from peft.tuners.adalora.layer import AdaLoraLayer

    out = {}
    for path, layer in model.named_modules():
        if isinstance(layer, AdaLoraLayer):
            before = layer.get_base_layer().weight.detach().clone()
            layer.merge()
            out[path] = layer.get_base_layer().weight.detach() - before
            layer.unmerge()
    return out


def _file_delta(tensors, name, shape) -> torch.Tensor:
    down, up = tensors[f"{name}.lora_down.weight"], tensors[f"{name}.lora_up.weight"]
    alpha = tensors[f"{name}.alpha"].item()
    return (up.flatten(1) @ down.flatten(1) * (alpha / down.shape[0])).reshape(shape)


def test_file_delta_equals_peft_merged_delta_per_module(fresh, tmp_path):
    pipe = fresh("sd1")
    comps = _adalora(pipe)
    path = tmp_path / "ada.safetensors"
    report = save_adapter(path, comps, "sd1", unet_config=dict(pipe.unet.config), save_precision=torch.float32)
    tensors = load_file(str(path))
    omitted = {}
    for component, model in comps.items():
        deltas = _merged_deltas(model)
        omitted[component] = 0
        for module_path, delta in deltas.items():
            prefix = "text_model." if component == "text_encoder" else ""
            name = module_to_community(component, prefix + module_path, "sd1", dict(pipe.unet.config))
            kept = int(torch.count_nonzero(dict(model.named_modules())[module_path].lora_E["default"]))
            if kept == 0:
                assert f"{name}.lora_down.weight" not in tensors and delta.abs().max() == 0
                omitted[component] += 1
                continue
            assert tensors[f"{name}.lora_down.weight"].shape[0] == kept
            assert torch.allclose(_file_delta(tensors, name, delta.shape), delta, atol=1e-5, rtol=0)
        assert report.trained[component] == len(deltas) - omitted[component]
    assert omitted["unet"] >= 1  # the module left with rank 0 is not in the file
    alphas = {v.item() for k, v in tensors.items() if k.endswith(".alpha")}
    assert alphas == {3.0}  # one alpha for the file; ranks differ per module
    assert len({v.shape[0] for k, v in tensors.items() if k.endswith("lora_down.weight")}) > 1
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["ss_network_module"] == "networks.lora"


def test_file_reloads_as_a_plain_lora_with_the_same_images(fresh, tmp_path):
    pipe = fresh("sd1")
    comps = _adalora(pipe, seed=1)
    trained = image(pipe)
    path = tmp_path / "ada.safetensors"
    save_adapter(path, comps, "sd1", unet_config=dict(pipe.unet.config), save_precision=torch.float32)
    ours = fresh("sd1")
    apply_adapter_file(ours, path, "mine")
    assert abs(image(ours) - trained).max() < 1e-4
    theirs = fresh("sd1")
    theirs.load_lora_weights(str(path), adapter_name="x")
    assert abs(image(theirs) - trained).max() < 1e-4
