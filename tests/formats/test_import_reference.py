"""Reference-shaped community files (every module of the reference list, on the tiny models) with random values:
every module is applied, and each module's merged update is (alpha / rank) * up @ down (scale 1 without alpha)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from sd_lora.adapters.targets import resolve_targets
from sd_lora.formats import apply_adapter_file, module_to_community
from sd_lora.models.tiny import build_tiny_pipeline
from tests.formats.conftest import components


def _reference_shaped(pipe, family, seed=0):
    """{community name: (down, up, alpha or None)} for preset full + text encoders attn-mlp, alphas varied."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for component, model in components(pipe).items():
        kind = "unet" if component == "unet" else "text_encoder"
        targets = resolve_targets(model, kind, preset="full" if kind == "unet" else "attn-mlp")
        named = dict(model.named_modules())
        for i, path in enumerate(targets.names):
            w = named[path].weight
            rank = 4 if i % 3 else 2
            down = torch.randn((rank, *w.shape[1:]) if w.ndim == 4 else (rank, w.shape[1]), generator=g) * 0.1
            up = torch.randn((w.shape[0], rank, 1, 1) if w.ndim == 4 else (w.shape[0], rank), generator=g) * 0.1
            alpha = None if i % 7 == 0 else (1.0 if path in targets.conv3x3 else 2.0)
            out[module_to_community(component, path, family, dict(pipe.unet.config))] = (component, path, down, up,
                                                                                         alpha)
    return out


def _flat_delta(down, up):
    return (up.flatten(1) @ down.flatten(1))


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_every_module_applied_with_scale_alpha_over_rank(tmp_path, family):
    pipe = build_tiny_pipeline(family, seed=0)
    modules = _reference_shaped(pipe, family)
    state = {}
    for name, (_, _, down, up, alpha) in modules.items():
        state[f"{name}.lora_down.weight"], state[f"{name}.lora_up.weight"] = down, up
        if alpha is not None:
            state[f"{name}.alpha"] = torch.tensor(alpha)
    path = tmp_path / "ref.safetensors"
    save_file(state, str(path))
    comps = components(pipe)
    before = {(c, p): dict(comps[c].named_modules())[p].weight.detach().clone() for c, p, *_ in modules.values()}

    report = apply_adapter_file(pipe, path, "r")
    counts = {}
    for component, *_ in modules.values():
        counts[component] = counts.get(component, 0) + 1
    assert report.modules == counts

    pipe.fuse_lora(adapter_names=["r"])
    for name, (component, path_, down, up, alpha) in modules.items():
        layer = dict(comps[component].named_modules())[path_]
        scale = alpha / down.shape[0] if alpha is not None else 1.0
        assert layer.scaling["r"] == pytest.approx(scale), name
        delta = layer.get_base_layer().weight.detach() - before[(component, path_)]
        want = (_flat_delta(down, up) * scale).reshape(delta.shape)
        assert torch.allclose(delta, want, atol=1e-5), name
