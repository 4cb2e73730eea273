"""Tiny pipelines and adapter files for the tool tests: random peft adapters, saved as sd-lora saves them."""

from __future__ import annotations

import pytest
import torch

UNET_ATTN = ["to_q", "to_k", "to_v", "to_out.0"]
UNET_CONV = ["conv1", "conv2", "conv_shortcut"]
TE_ATTN = ["q_proj", "k_proj", "v_proj", "out_proj"]


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny models run faster on one thread than on a shared 2-core CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny(family: str = "sd1", seed: int = 0):
    from sd_lora.models.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline(family, seed=seed)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def components(pipe) -> dict:
    out = {"unet": pipe.unet, "text_encoder": pipe.text_encoder}
    if getattr(pipe, "text_encoder_2", None) is not None:
        out["text_encoder_2"] = pipe.text_encoder_2
    return out


def _config(kind: str, targets, rank: int, alpha: float, alpha_pattern=None):
    from peft import LoHaConfig, LoKrConfig, LoraConfig

    if kind == "loha":
        return LoHaConfig(r=rank, alpha=alpha, target_modules=targets, init_weights=False)
    if kind == "lokr":
        return LoKrConfig(r=rank, alpha=alpha, target_modules=targets, init_weights=False)
    return LoraConfig(r=rank, lora_alpha=alpha, target_modules=targets, init_lora_weights=False,
                      use_dora=kind == "dora", alpha_pattern=alpha_pattern or {})


def save_random_adapter(pipe, path, family: str = "sd1", *, kind: str = "lora", rank: int = 4, alpha: float = 2.0,
                        seed: int = 0, conv: bool = False, text_encoder: bool = True, alpha_pattern=None,
                        unet_targets=None, std: float = 0.1):
    """Inject a random `kind` adapter (lora / locon / dora / loha / lokr), save it in community format (fp32,
    full metadata), remove it again; returns the path."""
    from peft import inject_adapter_in_model

    from sd_lora.formats import community_metadata, save_adapter
    from sd_lora.formats.peft_bridge import remove_adapter

    name = f"a{seed}"
    targets = unet_targets or (UNET_ATTN + (UNET_CONV if conv or kind == "locon" else []))
    comps = {"unet": pipe.unet}
    if text_encoder:
        comps.update({k: v for k, v in components(pipe).items() if k != "unet"})
    g = torch.Generator().manual_seed(seed)
    for cname, model in comps.items():
        peft_kind = "lora" if kind == "locon" else kind
        config = _config(peft_kind, targets if cname == "unet" else TE_ATTN, rank, alpha,
                         alpha_pattern if cname == "unet" else None)
        inject_adapter_in_model(config, model, adapter_name=name)
        with torch.no_grad():
            for pname, p in model.named_parameters():
                if f".{name}" in pname:
                    if "magnitude" in pname:
                        p.mul_(1 + 0.2 * torch.rand(p.shape, generator=g))
                    else:
                        p.copy_(torch.randn(p.shape, generator=g) * std)
    meta = community_metadata({"family": family, "adapter_type": kind, "title": name, "output_name": name,
                               "steps": 10, "seed": seed})
    save_adapter(path, comps, family, unet_config=dict(pipe.unet.config), adapter_name=name,
                 save_precision=torch.float32, metadata=meta)
    for model in comps.values():
        remove_adapter(model, name)
    return path


def image(pipe, seed: int = 3):
    return pipe("a red square", num_inference_steps=2, height=32, width=32, output_type="np",
                generator=torch.Generator().manual_seed(seed)).images


def community(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


def modules_of(path) -> dict[str, dict[str, torch.Tensor]]:
    """{community module name: {suffix: tensor}} read with safetensors directly (no sd-lora code)."""
    out: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in community(path).items():
        name, _, suffix = key.partition(".")
        out.setdefault(name, {})[suffix] = t.float()
    return out


def delta(params: dict[str, torch.Tensor]) -> torch.Tensor:
    """ΔW of a community LoRA module by plain torch: alpha / rank · up @ down (flattened)."""
    down, up = params["lora_down.weight"], params["lora_up.weight"]
    rank = down.shape[0]
    scale = float(params["alpha"]) / rank if "alpha" in params else 1.0
    return scale * up.flatten(1) @ down.flatten(1)


def with_spectrum(src, dst, module: str, spectrum, seed: int = 0):
    """Copy adapter file `src` to `dst` with `module` replaced by up @ down of exactly these singular values
    (orthonormal U, V; alpha = rank, so scale 1)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    with safe_open(str(src), "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    up, down = tensors[f"{module}.lora_up.weight"], tensors[f"{module}.lora_down.weight"]
    assert up.ndim == 2 and up.shape[1] == len(spectrum)
    u = torch.linalg.qr(torch.randn(up.shape[0], len(spectrum), generator=g))[0]
    v = torch.linalg.qr(torch.randn(down.shape[1], len(spectrum), generator=g))[0]
    tensors[f"{module}.lora_up.weight"] = (u * torch.tensor(spectrum)).contiguous()
    tensors[f"{module}.lora_down.weight"] = v.T.contiguous()
    tensors[f"{module}.alpha"] = torch.tensor(float(len(spectrum)))
    save_file(tensors, str(dst), metadata=meta)
    return dst


def full_size_meta(family: str):
    """A full-size pipeline's UNet, VAE and text encoders with no memory behind the weights."""
    from types import SimpleNamespace

    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from sd_lora.models.families import unet_architectures as architectures

    with torch.device("meta"):
        encoders = []
        for i, cfg in enumerate(architectures.text_encoder_configs(family)):
            cls = CLIPTextModelWithProjection if family == "sdxl" and i == 1 else CLIPTextModel
            encoders.append(cls(CLIPTextConfig(**cfg)))
        unet = UNet2DConditionModel(**architectures.unet_config(family))
        vae = AutoencoderKL(**architectures.vae_config(family))
    return SimpleNamespace(unet=unet, vae=vae, text_encoder=encoders[0], text_encoder_2=encoders[-1])
