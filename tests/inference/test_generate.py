"""Adapters at weights, two adapters vs one combined, fuse/unfuse, mixed batches (tiny SD1, CPU)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from sd_lora.errors import SdLoraError
from sd_lora.inference import AdapterSet, GenerationRequest, generate_images


def request(prompt="a red cat", seed=3, **kwargs):
    return GenerationRequest(prompt=prompt, seed=seed, steps=3, guidance=5.0, width=32, height=32, **kwargs)


def arrays(pipe, requests, adapters, batch_size=1):
    return [im.array for im in generate_images(pipe, requests, adapters=adapters, batch_size=batch_size,
                                               progress=False)]


def test_scale_zero_is_the_base_and_distance_grows_with_scale(sd1, sd1_loras):
    pipe, info = sd1
    adapters = AdapterSet(pipe, family=info.family)
    adapters.add(sd1_loras["style"], name="style")
    base, *scaled = arrays(pipe, [request()] + [request(loras=[("style", w)]) for w in (0.0, 0.5, 1.0)], adapters)
    distances = [float(np.abs(a - base).mean()) for a in scaled]
    assert distances[0] == 0.0
    assert 0.0 < distances[1] < distances[2]


def combined_lora(files, weights, path):
    """One rank-8 LoRA whose update is sum(w_i * B_i A_i): A stacked, B side by side and scaled."""
    states = [load_file(f) for f in files]
    combined = {}
    for key in states[0]:
        if ".lora_A." in key:
            combined[key] = torch.cat([s[key] for s in states], dim=0)
        elif ".lora_B." in key:
            combined[key] = torch.cat([w * s[key] for w, s in zip(weights, states)], dim=1)
    save_file(combined, str(path))
    return path


def test_two_adapters_equal_one_adapter_holding_the_weighted_sum(sd1, sd1_loras, tmp_path):
    pipe, info = sd1
    files = [sd1_loras["style"], sd1_loras["third"]]
    merged = combined_lora(files, (0.6, -0.3), tmp_path / "merged.safetensors")
    adapters = AdapterSet(pipe, family=info.family)
    two, one, base = arrays(pipe, [request(loras=[(str(files[0]), 0.6), (str(files[1]), -0.3)]),
                                   request(loras=[(str(merged), 1.0)]), request()], adapters)
    assert np.abs(two - base).max() > 1e-3  # the adapters do something
    np.testing.assert_allclose(two, one, atol=1e-5)


def test_fused_equals_unfused_and_unfuse_restores_the_base_bit_for_bit(sd1, sd1_loras):
    pipe, info = sd1
    adapters = AdapterSet(pipe, family=info.family)
    files = adapters.load([str(sd1_loras["style"]), str(sd1_loras["other"])])
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items() if "lora_" not in k}
    before_te = {k: v.clone() for k, v in pipe.text_encoder.state_dict().items() if "lora_" not in k}
    unfused = arrays(pipe, [request(loras=[(str(files[0]), 0.7), (str(files[1]), 0.4)])], adapters)[0]
    adapters.fuse([(files[0], 0.7), (files[1], 0.4)])
    fused = arrays(pipe, [request()], adapters)[0]
    with pytest.raises(SdLoraError, match="fused"):
        arrays(pipe, [request(loras=[(str(files[0]), 1.0)])], adapters)
    adapters.unfuse()
    np.testing.assert_allclose(fused, unfused, atol=1e-4)
    after = {k: v for k, v in pipe.unet.state_dict().items() if "lora_" not in k}
    after_te = {k: v for k, v in pipe.text_encoder.state_dict().items() if "lora_" not in k}
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(torch.equal(before_te[k], after_te[k]) for k in before_te)


def test_mixed_batch_equals_each_image_alone(sd1, sd1_loras):
    pipe, info = sd1
    adapters = AdapterSet(pipe, family=info.family, lora_dir=sd1_loras["style"].parent)
    requests = [request("a red cat <lora:style:0.8>", seed=1),
                request("a blue dog <lora:other:0.5>", seed=2),  # has text-encoder layers too
                request("a tree", seed=3),
                request("a red cat <lora:style:0.3>", seed=4)]  # same file, another weight, same batch
    alone = arrays(pipe, requests, adapters, batch_size=1)
    together = arrays(pipe, requests, adapters, batch_size=4)
    for a, b in zip(alone, together):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert np.abs(alone[0] - alone[3]).max() > 1e-3  # the two weights differ


def test_errors_come_before_any_generation(sd1, sd1_loras, sdxl_lora, monkeypatch):
    pipe, info = sd1
    adapters = AdapterSet(pipe, family=info.family, lora_dir=sd1_loras["style"].parent)
    monkeypatch.setattr(type(pipe), "__call__", lambda *a, **k: pytest.fail("generation started"))
    with pytest.raises(SdLoraError, match="'nothing' not found"):
        generate_images(pipe, [request(), request("x <lora:nothing:1>")], adapters=adapters, progress=False)
    with pytest.raises(SdLoraError, match="multiple of 8"):
        generate_images(pipe, [request(), GenerationRequest("x", width=36, height=32)], adapters=adapters)
    with pytest.raises(SdLoraError):
        generate_images(pipe, [request(), request(loras=[(str(sdxl_lora), 1.0)])], adapters=adapters)


def test_community_file_gives_the_same_image_as_the_diffusers_file(sd1, sd1_loras, tmp_path):
    from sd_lora.formats import convert_file

    pipe, info = sd1
    kohya = convert_file(sd1_loras["style"], tmp_path / "style_kohya.safetensors", to="community", family="sd1")
    adapters = AdapterSet(pipe, family=info.family)
    a, b = arrays(pipe, [request(loras=[(str(sd1_loras["style"]), 0.8)]), request(loras=[(str(kohya), 0.8)])],
                  adapters)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_sdxl_mixed_batch_equals_each_image_alone(sdxl, sdxl_lora):
    pipe, info = sdxl
    adapters = AdapterSet(pipe, family=info.family)
    requests = [request(seed=1, loras=[(str(sdxl_lora), 0.9)]), request("a tree", seed=2)]
    alone = arrays(pipe, requests, adapters, batch_size=1)
    together = arrays(pipe, requests, adapters, batch_size=2)
    for a, b in zip(alone, together):
        np.testing.assert_allclose(a, b, atol=1e-5)
    base = arrays(pipe, [request(seed=1)], adapters)[0]
    assert np.abs(alone[0] - base).max() > 1e-3
