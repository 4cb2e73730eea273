"""Full-size SD3.5 Medium, SD3.5 Large and FLUX.1-dev (meta device): a LoRA on every Linear / Conv2d exports
exactly the original checkpoint's module names and shapes (tests/formats/data/transformer_keys, see its
PROVENANCE.md) and imports back to the same update per diffusers module."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

from sd_lora.formats.community import from_community, to_community

DATA = Path(__file__).parent / "data" / "transformer_keys"
RANK = 1


def _expected(weights: dict[str, list[int]], row_blocks: dict[str, int]) -> dict[str, tuple[int, ...]]:
    """A rank-RANK LoRA on every diffusers module: a weight made of n diffusers modules holds rank n * RANK."""
    out = {}
    for key, shape in weights.items():
        name = "lora_unet_" + key[: -len(".weight")].replace(".", "_")
        rank = RANK * row_blocks.get(key, 1)
        out[f"{name}.lora_down.weight"] = (rank, *shape[1:])
        out[f"{name}.lora_up.weight"] = (shape[0], rank, *[1] * (len(shape) - 2))
        out[f"{name}.alpha"] = ()
    return out


@pytest.mark.parametrize("name, family, cls", [("sd35_medium", "sd3", SD3Transformer2DModel),
                                                ("sd35_large", "sd3", SD3Transformer2DModel),
                                                ("flux1_dev", "flux", FluxTransformer2DModel)])
def test_full_size_export_matches_the_original_layout(name, family, cls):
    data = json.loads((DATA / f"{name}.json").read_text())
    with torch.device("meta"):
        model = cls(**data["config"])
    g = torch.Generator().manual_seed(0)
    modules = {}
    for path, m in model.named_modules():
        if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)):
            shape = tuple(m.weight.shape)
            modules[path] = {"lora_A": torch.randn(RANK, *shape[1:], generator=g),
                             "lora_B": torch.randn(shape[0], RANK, *[1] * (len(shape) - 2), generator=g),
                             "alpha": torch.tensor(0.5)}
    exported = to_community({"transformer": modules}, family, model.config)
    assert {k: tuple(v.shape) for k, v in exported.items()} == _expected(data["weights"], data["row_blocks"])

    back, problems = from_community(exported, family, model.config)
    assert problems == [] and sorted(back["transformer"]) == sorted(modules)
    for path in ("transformer_blocks.3.attn.to_k", "transformer_blocks.3.attn.add_v_proj", "norm_out.linear",
                 "single_transformer_blocks.5.proj_mlp", "transformer_blocks.0.attn2.to_v"):
        if path not in modules:
            continue
        want, got = modules[path], back["transformer"][path]
        torch.testing.assert_close(got["lora_B"].flatten(1) @ got["lora_A"].flatten(1) * float(got["alpha"]) /
                                   got["lora_A"].shape[0],
                                   want["lora_B"].flatten(1) @ want["lora_A"].flatten(1) * 0.5, rtol=0, atol=1e-6)
