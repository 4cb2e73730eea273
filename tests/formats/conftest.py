"""Tiny pipelines with adapters injected by sd_lora.adapters and randomised, and image helpers."""

from __future__ import annotations

import pytest
import torch

from sd_lora.adapters import adapter_spec, build_peft_config, inject
from sd_lora.config.schema import NetworkConfig

TE_NAMES = ("text_encoder", "text_encoder_2")


def components(pipe) -> dict:
    out = {"unet": pipe.unet}
    out.update({n: getattr(pipe, n) for n in TE_NAMES if getattr(pipe, n, None) is not None})
    return out


def randomise(model, adapter_name: str = "default", seed: int = 0, std: float = 0.05) -> None:
    """Give every adapter tensor random non-zero values (peft starts LoRA B at zero)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if f".{adapter_name}" in name and any(t in name for t in ("lora_", "hada_", "lokr_")):
            with torch.no_grad():
                if "magnitude" in name:
                    p.mul_(1 + 0.1 * torch.rand(p.shape, generator=g))
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * std)


def add_adapters(pipe, method: str = "lora", preset: str = "full", seed: int = 0, text_encoders: bool = True,
                 adapter_name: str = "default", **network) -> dict:
    """Inject `method` into the UNet (preset) and text encoders (attn-mlp) with random values; returns components."""
    net = NetworkConfig(type=method, preset=preset, rank=4, alpha=2, conv_rank=4, conv_alpha=1, **network)
    te_net = NetworkConfig(type=method, preset="attn-mlp", rank=4, alpha=2, **network)
    comps = components(pipe)
    for i, (name, model) in enumerate(comps.items()):
        if name != "unet" and not text_encoders:
            continue
        spec = adapter_spec(net if name == "unet" else te_net, model, "unet" if name == "unet" else "text_encoder")
        inject(model, build_peft_config(method, spec), adapter_name=adapter_name)
        randomise(model, adapter_name, seed=seed + i)
    return {n: m for n, m in comps.items() if n == "unet" or text_encoders}


def image(pipe, seed: int = 3):
    return pipe("a red square", num_inference_steps=2, height=32, width=32, output_type="np",
                generator=torch.Generator().manual_seed(seed)).images


@pytest.fixture
def fresh():
    """fresh(family) -> a new tiny pipeline with the seed-0 base weights."""
    from sd_lora.models.tiny import build_tiny_pipeline

    def make(family):
        pipe = build_tiny_pipeline(family, seed=0)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    return make
