"""merge: concat is exact (Σ wᵢ·ΔWᵢ, per-module alphas, partial modules), svd is the optimal truncation."""

from __future__ import annotations

import pytest
import torch

from sd_lora.errors import SdLoraError
from sd_lora.tools import merge_adapters
from tests.tools.conftest import community, delta, image, modules_of, save_random_adapter, tiny


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("merge")
    pipe = tiny("sd1")
    return {
        # LoCon (3x3 convs) with a different alpha on attn1.to_k, UNet + text encoder
        "a": save_random_adapter(pipe, d / "a.safetensors", seed=1, conv=True, alpha_pattern={"to_k": 1.0}),
        # plain LoRA of another rank, UNet only: text-encoder modules are in `a` only
        "b": save_random_adapter(pipe, d / "b.safetensors", seed=2, rank=3, alpha=3.0, text_encoder=False),
        "loha": save_random_adapter(pipe, d / "loha.safetensors", kind="loha", seed=3, text_encoder=False),
        "dora": save_random_adapter(pipe, d / "dora.safetensors", kind="dora", seed=4, text_encoder=False),
    }


def _want(parts):
    out = {}
    for mods, w in parts:
        for name, params in mods.items():
            out[name] = out.get(name, 0) + w * delta(params)
    return out


def test_concat_is_exact_weighted_sum(files, tmp_path):
    a, b = modules_of(files["a"]), modules_of(files["b"])
    alphas = {float(p["alpha"]) for p in a.values()}
    assert len(alphas) > 1, "the fixture must have per-module alphas"
    assert any(p["lora_down.weight"].ndim == 4 and p["lora_down.weight"].shape[-1] == 3 for p in a.values())
    out = tmp_path / "m.safetensors"
    report = merge_adapters([f"{files['a']}:0.7", f"{files['b']}:-0.3"], out, method="concat", save_precision="fp32")
    merged = modules_of(out)
    want = _want([(a, 0.7), (b, -0.3)])
    assert set(merged) == set(a) | set(b)
    assert report.shared == len(set(a) & set(b)) > 0
    for name, w in want.items():
        got = delta(merged[name])
        assert float((got - w).abs().max()) <= 1e-5 * float(w.abs().max()), name
        ranks = (a[name]["lora_down.weight"].shape[0] if name in a else 0) + \
                (b[name]["lora_down.weight"].shape[0] if name in b else 0)
        assert merged[name]["lora_down.weight"].shape[0] == ranks


def test_concat_image_equals_inputs_loaded_together(files, tmp_path):
    from sd_lora.inference.adapters import AdapterSet

    out = tmp_path / "m.safetensors"
    merge_adapters([(files["a"], 0.7), (files["b"], 0.3)], out, save_precision="fp32")
    pipe = tiny("sd1")
    base = image(pipe)
    together = AdapterSet(pipe)
    together.activate([(files["a"], 0.7), (files["b"], 0.3)])
    want = image(pipe)
    pipe2 = tiny("sd1")
    AdapterSet(pipe2).activate([(out, 1.0)])
    got = image(pipe2)
    assert abs(want - base).max() > 1e-3  # the adapters change the image
    assert abs(got - want).max() < 1e-4


def test_svd_is_exact_at_full_rank_and_optimal_below(files, tmp_path):
    a, b = modules_of(files["a"]), modules_of(files["b"])
    want = _want([(a, 0.5), (b, 0.5)])
    full, low = tmp_path / "full.safetensors", tmp_path / "low.safetensors"
    merge_adapters([f"{files['a']}:0.5", f"{files['b']}:0.5"], full, method="svd", rank=7, save_precision="fp32")
    merge_adapters([f"{files['a']}:0.5", f"{files['b']}:0.5"], low, method="svd", rank=2, conv_rank=3,
                   save_precision="fp32")
    for name, params in modules_of(full).items():
        assert float((delta(params) - want[name]).abs().max()) <= 1e-4 * float(want[name].abs().max()), name
    for name, params in modules_of(low).items():
        down = params["lora_down.weight"]
        conv3 = down.ndim == 4 and down.shape[-1] == 3
        k = 3 if conv3 else 2
        assert down.shape[0] == k
        assert float(params["alpha"]) == k
        s = torch.linalg.svdvals(want[name].double())
        optimal = float(torch.sqrt((s[k:] ** 2).sum()))
        err = float(torch.linalg.norm((delta(params) - want[name]).double()))
        assert err == pytest.approx(optimal, rel=1e-3, abs=1e-6), name


def _loha_delta(p):
    scale = float(p["alpha"]) / p["hada_w1_b"].shape[0]
    return scale * (p["hada_w1_a"] @ p["hada_w1_b"]) * (p["hada_w2_a"] @ p["hada_w2_b"])


def test_loha_concat_refused_svd_from_full_delta(files, tmp_path):
    with pytest.raises(SdLoraError, match="LoHa.*--method svd"):
        merge_adapters([files["a"], files["loha"]], tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()
    out = tmp_path / "m.safetensors"
    merge_adapters([f"{files['loha']}:0.6", f"{files['b']}:0.4"], out, method="svd", rank=64, save_precision="fp32")
    loha, b, merged = modules_of(files["loha"]), modules_of(files["b"]), modules_of(out)
    for name, p in loha.items():
        want = 0.6 * _loha_delta(p).flatten(1) + 0.4 * delta(b[name])
        assert float((delta(merged[name]) - want).abs().max()) <= 1e-4 * float(want.abs().max()), name


def test_dora_svd_needs_the_model_and_reproduces_it(files, tmp_path):
    from sd_lora.inference.adapters import AdapterSet

    with pytest.raises(SdLoraError, match="DoRA.*--model"):
        merge_adapters([files["dora"]], tmp_path / "x.safetensors", method="svd", rank=4)
    with pytest.raises(SdLoraError, match="concat"):
        merge_adapters([files["dora"]], tmp_path / "x.safetensors")
    pipe = tiny("sd1")
    out = tmp_path / "d.safetensors"
    merge_adapters([files["dora"]], out, method="svd", rank=64, model=pipe, save_precision="fp32")
    assert all(not k.endswith("dora_scale") for k in community(out))
    AdapterSet(pipe).activate([(files["dora"], 1.0)])
    want = image(pipe)
    pipe2 = tiny("sd1")
    AdapterSet(pipe2).activate([(out, 1.0)])
    assert abs(image(pipe2) - want).max() < 1e-4


def test_bad_inputs(files, tmp_path):
    with pytest.raises(SdLoraError, match="no such file"):
        merge_adapters([files["a"], tmp_path / "missing.safetensors"], tmp_path / "o.safetensors")
    with pytest.raises(SdLoraError, match="also an input"):
        merge_adapters([files["a"], files["b"]], files["b"])
    with pytest.raises(SdLoraError, match="needs --rank"):
        merge_adapters([files["a"], files["b"]], tmp_path / "o.safetensors", method="svd")
    with pytest.raises(SdLoraError, match="svd only"):
        merge_adapters([files["a"], files["b"]], tmp_path / "o.safetensors", rank=4)
    sd2 = save_random_adapter(tiny("sd2"), tmp_path / "sd2.safetensors", family="sd2", seed=5)
    with pytest.raises(SdLoraError, match="different model families"):
        merge_adapters([files["a"], sd2], tmp_path / "o.safetensors")
    assert not list(tmp_path.glob("o.safetensors*")) and not list(tmp_path.glob(".o.safetensors*"))


def test_any_input_format_and_sdxl_names(files, tmp_path):
    """A diffusers-format copy of an input merges like the community file; SDXL names and layout survive."""
    from sd_lora.formats import convert_file

    diff = convert_file(files["b"], tmp_path / "b_diffusers.safetensors", "diffusers", "sd1")
    m1, m2 = tmp_path / "m1.safetensors", tmp_path / "m2.safetensors"
    merge_adapters([files["a"], files["b"]], m1, save_precision="fp32")
    merge_adapters([files["a"], diff], m2, save_precision="fp32")
    one, two = modules_of(m1), modules_of(m2)
    assert set(one) == set(two)
    for name in one:
        assert torch.allclose(delta(one[name]), delta(two[name]), atol=1e-6), name

    xl = save_random_adapter(tiny("sdxl"), tmp_path / "xl.safetensors", "sdxl", seed=9)
    out = tmp_path / "xl2.safetensors"
    merge_adapters([f"{xl}:0.5", f"{xl}:0.5"], out, save_precision="fp32")  # = the input's delta
    before, after = modules_of(xl), modules_of(out)
    assert set(before) == set(after) and any(n.startswith("lora_te2_") for n in after)
    assert any(n.startswith("lora_unet_input_blocks_") for n in after)
    for name in before:
        assert torch.allclose(delta(after[name]), delta(before[name]), atol=1e-6), name
    from safetensors import safe_open

    with safe_open(str(out), "pt") as f:
        assert "sd_lora.unet_layout" in f.metadata() and f.metadata()["ss_base_model_version"] == "sdxl_base_v1-0"


def test_lokr_svd_merge_renders_like_the_lokr(tmp_path):
    """LoKr (Kronecker) deltas merge by SVD of the full delta: at full rank the result renders like the input."""
    from sd_lora.inference.adapters import AdapterSet

    pipe = tiny("sd1")
    lokr = save_random_adapter(pipe, tmp_path / "lokr.safetensors", kind="lokr", seed=7, text_encoder=False)
    assert any(k.startswith("lora_unet_") and ".lokr_" in k for k in community(lokr))
    with pytest.raises(SdLoraError, match="LoKr"):
        merge_adapters([lokr], tmp_path / "x.safetensors")
    out = tmp_path / "m.safetensors"
    merge_adapters([f"{lokr}:0.5", f"{lokr}:0.5"], out, method="svd", rank=64, save_precision="fp32")
    AdapterSet(pipe).activate([(lokr, 1.0)])
    want = image(pipe)
    pipe2 = tiny("sd1")
    AdapterSet(pipe2).activate([(out, 1.0)])
    assert abs(image(pipe2) - want).max() < 1e-4
