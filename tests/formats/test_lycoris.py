"""LyCORIS LoHa / LoKr files built from the formulas in FORMATS.md apply exactly that delta, fused and unfused."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from sd_lora.formats import apply_adapter_file, module_to_community
from sd_lora.formats.lycoris import delta_weight
from sd_lora.models.tiny import build_tiny_pipeline

LINEAR = "down_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q"  # [32, 32]
WIDE = "down_blocks.0.attentions.0.transformer_blocks.0.ff.net.0.proj"  # [256, 32]
CONV1 = "down_blocks.0.attentions.0.proj_in"  # SD1: 1x1 conv [32, 32, 1, 1]
CONV3 = "down_blocks.0.resnets.0.conv1"  # [32, 32, 3, 3]


def _r(*shape, seed):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * 0.2


def _rebuild(t, w_a, w_b):
    return torch.einsum("i j k l, j r, i p -> p r k l", t, w_b, w_a)


def _loha(shape, rank, alpha, seed, tucker=False):
    out, inp = shape[0], shape[1]
    k = shape[2:] if len(shape) == 4 else ()
    if tucker:
        p = {"hada_w1_a": _r(rank, out, seed=seed), "hada_w1_b": _r(rank, inp, seed=seed + 1),
             "hada_w2_a": _r(rank, out, seed=seed + 2), "hada_w2_b": _r(rank, inp, seed=seed + 3),
             "hada_t1": _r(rank, rank, *k, seed=seed + 4), "hada_t2": _r(rank, rank, *k, seed=seed + 5)}
        w = _rebuild(p["hada_t1"], p["hada_w1_a"], p["hada_w1_b"]) * _rebuild(p["hada_t2"], p["hada_w2_a"],
                                                                             p["hada_w2_b"])
    else:
        flat = inp * (k[0] * k[1] if k else 1)
        p = {"hada_w1_a": _r(out, rank, seed=seed), "hada_w1_b": _r(rank, flat, seed=seed + 1),
             "hada_w2_a": _r(out, rank, seed=seed + 2), "hada_w2_b": _r(rank, flat, seed=seed + 3)}
        w = (p["hada_w1_a"] @ p["hada_w1_b"]) * (p["hada_w2_a"] @ p["hada_w2_b"])
    p["alpha"] = torch.tensor(float(alpha))
    return p, (w * alpha / rank).reshape(shape)


def _lokr(shape, rank, alpha, seed, w2="decomposed"):
    """w1 [4, 4] full (32 = 4 * 8 on both axes); w2 decomposed, full or Tucker."""
    a, c = 4, 4
    b, d = shape[0] // a, shape[1] // c
    k = tuple(shape[2:])
    p = {"lokr_w1": _r(a, c, seed=seed)}
    if w2 == "full":
        p["lokr_w2"] = _r(b, d, *k, seed=seed + 1)
        w2_full, scale = p["lokr_w2"], 1.0  # both factors full: LyCORIS ignores alpha
    elif w2 == "tucker":
        p.update(lokr_w2_a=_r(rank, b, seed=seed + 1), lokr_w2_b=_r(rank, d, seed=seed + 2),
                 lokr_t2=_r(rank, rank, *k, seed=seed + 3))
        w2_full, scale = _rebuild(p["lokr_t2"], p["lokr_w2_a"], p["lokr_w2_b"]), alpha / rank
    else:
        p.update(lokr_w2_a=_r(b, rank, seed=seed + 1), lokr_w2_b=_r(rank, d * (k[0] * k[1] if k else 1), seed=seed + 2))
        w2_full, scale = (p["lokr_w2_a"] @ p["lokr_w2_b"]).reshape(b, d, *k), alpha / rank
    w1 = p["lokr_w1"][:, :, None, None] if w2_full.ndim == 4 else p["lokr_w1"]
    p["alpha"] = torch.tensor(float(alpha))
    return p, (torch.kron(w1.contiguous(), w2_full.contiguous()) * scale).reshape(shape)


CASES = {
    "loha": lambda s: {LINEAR: _loha((32, 32), 4, 2, s), WIDE: _loha((256, 32), 2, 1.5, s + 10),
                       CONV1: _loha((32, 32, 1, 1), 4, 2, s + 20), CONV3: _loha((32, 32, 3, 3), 4, 1, s + 30)},
    "loha-tucker": lambda s: {LINEAR: _loha((32, 32), 4, 2, s),
                              CONV3: _loha((32, 32, 3, 3), 4, 1, s + 30, tucker=True)},
    "lokr": lambda s: {LINEAR: _lokr((32, 32), 2, 1, s), CONV3: _lokr((32, 32, 3, 3), 2, 1, s + 30)},
    "lokr-full": lambda s: {LINEAR: _lokr((32, 32), 2, 7, s, w2="full"),
                            CONV3: _lokr((32, 32, 3, 3), 2, 7, s + 30, w2="full")},
    "lokr-tucker": lambda s: {LINEAR: _lokr((32, 32), 2, 1, s), CONV3: _lokr((32, 32, 3, 3), 2, 1, s + 30, "tucker")},
}


def _write(tmp_path, modules, unet_config):
    state = {}
    for path, (params, _) in modules.items():
        name = module_to_community("unet", path, "sd1", unet_config)
        state.update({f"{name}.{k}": v for k, v in params.items()})
    path = tmp_path / "lycoris.safetensors"
    save_file(state, str(path))
    return path


def _base_out(module, x):
    base = module.get_base_layer()
    return base(x)


@pytest.mark.parametrize("case", sorted(CASES))
def test_lycoris_file_applies_the_formula_delta(tmp_path, case):
    pipe = build_tiny_pipeline("sd1", seed=0)
    modules = CASES[case](1)
    for params, delta in modules.values():
        assert torch.allclose(delta_weight(params, tuple(delta.shape)), delta, atol=1e-6)
    named = dict(pipe.unet.named_modules())
    before = {p: named[p].weight.detach().clone() for p in modules}
    report = apply_adapter_file(pipe, _write(tmp_path, modules, dict(pipe.unet.config)), "ly")
    assert report.modules == {"unet": len(modules)}
    assert report.adapter_type == case.split("-")[0]
    named = dict(pipe.unet.named_modules())
    for path, (_, delta) in modules.items():
        layer = named[path]
        if delta.ndim == 2:
            x = torch.randn(3, delta.shape[1])
            want = F.linear(x, delta)
        else:
            x = torch.randn(1, delta.shape[1], 6, 6)
            base = layer.get_base_layer()
            want = F.conv2d(x, delta, stride=base.stride, padding=base.padding)
        with torch.no_grad():
            got = layer(x) - _base_out(layer, x)
        assert torch.allclose(got, want, atol=1e-5), path
    pipe.fuse_lora(adapter_names=["ly"])
    for path, (_, delta) in modules.items():
        fused = named[path].get_base_layer().weight.detach()
        assert torch.allclose(fused - before[path], delta, atol=1e-5), path
    pipe.unfuse_lora()
    for path in modules:
        assert torch.allclose(named[path].get_base_layer().weight, before[path], atol=1e-6), path
