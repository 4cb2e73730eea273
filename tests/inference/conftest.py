"""Adapter files made in the tests (random LoRA weights on the tiny models) and fresh tiny pipelines."""

from __future__ import annotations

import pytest
import torch

TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]


@pytest.fixture(autouse=True)
def one_thread():
    """The tiny models are far faster on one thread than on a shared, oversubscribed CPU."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def load_tiny(directory):
    from sd_lora.models.load import load_pipeline

    pipe, info = load_pipeline(str(directory))
    pipe.set_progress_bar_config(disable=True)
    return pipe, info


def lora_state(unet, name: str, seed: int, rank: int = 4, scale: float = 1.0) -> dict[str, torch.Tensor]:
    """A random LoRA on `unet` as a diffusers state dict (`unet.`-free peft keys), removed again afterwards."""
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    from sd_lora.formats.peft_bridge import remove_adapter

    torch.manual_seed(seed)
    inject_adapter_in_model(LoraConfig(r=rank, lora_alpha=rank, target_modules=TARGETS, init_lora_weights=False),
                            unet, adapter_name=name)
    state = {k: v.detach().clone() * (scale if ".lora_B." in k else 1.0)
             for k, v in get_peft_model_state_dict(unet, adapter_name=name).items()}
    remove_adapter(unet, name)
    return state


def save_lora(directory, name: str, unet_state: dict, pipe_class=None) -> "Path":
    from diffusers import StableDiffusionPipeline

    pipe_class = pipe_class or StableDiffusionPipeline
    pipe_class.save_lora_weights(str(directory), unet_lora_layers=unet_state, weight_name=f"{name}.safetensors")
    return directory / f"{name}.safetensors"


def text_encoder_lora_state(text_encoder, name: str, seed: int) -> dict[str, torch.Tensor]:
    from peft import LoraConfig, inject_adapter_in_model
    from peft.utils import get_peft_model_state_dict

    from sd_lora.formats.peft_bridge import remove_adapter

    torch.manual_seed(seed)
    inject_adapter_in_model(LoraConfig(r=4, lora_alpha=4, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"],
                                       init_lora_weights=False), text_encoder, adapter_name=name)
    state = {k: v.detach().clone() for k, v in get_peft_model_state_dict(text_encoder, adapter_name=name).items()}
    remove_adapter(text_encoder, name)
    return state


@pytest.fixture(scope="session")
def sd1_loras(tiny_sd1_dir, tmp_path_factory):
    """LoRA files for the tiny SD1 model: style, other (UNet + text encoder), third; different random weights."""
    from diffusers import StableDiffusionPipeline

    pipe, _ = load_tiny(tiny_sd1_dir)
    out = tmp_path_factory.mktemp("loras_sd1")
    files = {name: save_lora(out, name, lora_state(pipe.unet, name, seed))
             for seed, name in ((1, "style"), (3, "third"))}
    StableDiffusionPipeline.save_lora_weights(
        str(out), unet_lora_layers=lora_state(pipe.unet, "other", 2),
        text_encoder_lora_layers=text_encoder_lora_state(pipe.text_encoder, "other", 2),
        weight_name="other.safetensors")
    files["other"] = out / "other.safetensors"
    return files


@pytest.fixture(scope="session")
def sdxl_lora(tiny_sdxl_dir, tmp_path_factory):
    from diffusers import StableDiffusionXLPipeline

    pipe, _ = load_tiny(tiny_sdxl_dir)
    out = tmp_path_factory.mktemp("loras_sdxl")
    return save_lora(out, "xl", lora_state(pipe.unet, "xl", 7), StableDiffusionXLPipeline)


@pytest.fixture
def sd1(tiny_sd1_dir):
    return load_tiny(tiny_sd1_dir)


@pytest.fixture
def sdxl(tiny_sdxl_dir):
    return load_tiny(tiny_sdxl_dir)
