"""Tiny SD3 / FLUX transformers and text encoders (diffusers' own test sizes) with random LoRA-family adapters."""

from __future__ import annotations

import types
import zlib

import torch
from diffusers import FluxTransformer2DModel, SD3Transformer2DModel
from peft import LoHaConfig, LoraConfig, inject_adapter_in_model
from transformers import CLIPTextConfig, CLIPTextModelWithProjection, T5Config, T5EncoderModel

SD3_TINY = dict(sample_size=32, patch_size=1, in_channels=4, num_layers=2, attention_head_dim=8,
                num_attention_heads=4, caption_projection_dim=32, joint_attention_dim=32, pooled_projection_dim=64,
                out_channels=4, dual_attention_layers=(0,), qk_norm="rms_norm")
FLUX_TINY = dict(patch_size=1, in_channels=4, num_layers=2, num_single_layers=2, attention_head_dim=16,
                 num_attention_heads=2, joint_attention_dim=32, pooled_projection_dim=32, axes_dims_rope=[4, 4, 8],
                 guidance_embeds=True)
ATTENTION = ["to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out"]
EVERYTHING = ATTENTION + ["proj_mlp", "proj_out", "norm1.linear", "norm1_context.linear", "norm.linear",
                          "norm_out.linear", "ff.net.0.proj", "ff.net.2", "ff_context.net.0.proj", "ff_context.net.2",
                          "context_embedder", "x_embedder", "pos_embed.proj", "linear_1", "linear_2"]
TE_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
T5_TARGETS = ["q", "k", "v", "o", "wi_0", "wi_1", "wo"]


def transformer(family: str, seed: int = 0):
    torch.manual_seed(seed)
    return SD3Transformer2DModel(**SD3_TINY) if family == "sd3" else FluxTransformer2DModel(**FLUX_TINY)


def clip(seed: int):
    torch.manual_seed(seed)
    return CLIPTextModelWithProjection(CLIPTextConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                                      num_hidden_layers=2, projection_dim=32, vocab_size=99))


def t5(seed: int):
    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(d_model=32, d_kv=8, d_ff=37, num_layers=2, num_heads=4, vocab_size=99,
                                   feed_forward_proj="gated-gelu"))


def models(family: str, seed: int = 0) -> dict[str, torch.nn.Module]:
    """Base components as the family's pipeline names them."""
    if family == "sd3":
        return {"transformer": transformer("sd3", seed), "text_encoder": clip(seed + 1),
                "text_encoder_2": clip(seed + 2), "text_encoder_3": t5(seed + 3)}
    return {"transformer": transformer("flux", seed), "text_encoder": clip(seed + 1), "text_encoder_2": t5(seed + 2)}


def randomise(model, adapter_name: str = "default", seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if f".{adapter_name}" in name:
            with torch.no_grad():
                if "magnitude" in name:
                    p.mul_(1 + 0.1 * torch.rand(p.shape, generator=g))
                else:
                    p.copy_(torch.randn(p.shape, generator=g) * 0.1)


def adapt(comps: dict, method: str = "lora", targets=ATTENTION, seed: int = 0, alpha: float = 2, **kwargs) -> dict:
    """Inject `method` (lora / dora / loha) with random values into every component; returns the components."""
    for i, (name, model) in enumerate(comps.items()):
        wanted = targets if name == "transformer" else (T5_TARGETS if "T5" in type(model).__name__ else TE_TARGETS)
        if method == "loha":
            config = LoHaConfig(r=4, alpha=alpha, target_modules=wanted, **kwargs)
        else:
            config = LoraConfig(r=4, lora_alpha=alpha, target_modules=wanted, use_dora=method == "dora", **kwargs)
        inject_adapter_in_model(config, model, adapter_name="default")
        randomise(model, seed=seed + i)
    return comps


def pipe_of(comps: dict):
    """A stand-in pipeline: what apply_adapter_file reads (component attributes, the transformer's config)."""
    return types.SimpleNamespace(**comps)


def adapted_outputs(model, adapter_name: str, seed: int = 5) -> dict[str, torch.Tensor]:
    """{module path: output of the adapted layer on a fixed random input} for every layer holding the adapter."""
    from sd_lora.formats.peft_bridge import adapted_modules

    out = {}
    for path, layer in sorted(adapted_modules(model, adapter_name).items()):
        g = torch.Generator().manual_seed(seed + zlib.crc32(path.encode()))  # the same input whatever else is adapted
        base = layer.get_base_layer()
        x = (torch.randn(2, base.in_channels, 4, 4, generator=g) if isinstance(base, torch.nn.Conv2d)
             else torch.randn(3, base.in_features, generator=g))
        layer.set_adapter(adapter_name) if hasattr(layer, "set_adapter") else None
        with torch.no_grad():
            out[path] = layer(x) - base(x)
    return out
