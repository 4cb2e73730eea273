"""What the transformers captioners share: loading processor + model on a device in a dtype, and generating."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sd_lora.captioning.captioner import CaptionerSettings, pick_device, pick_dtype
from sd_lora.captioning.hub import ModelFiles
from sd_lora.errors import SdLoraError
from sd_lora.logs import quiet_libraries

__all__ = ["LoadedModel", "load_image_text_model", "generate"]

_TORCH_DTYPES = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}


@dataclass
class LoadedModel:
    processor: Any
    model: Any
    device: str
    dtype: str


def load_image_text_model(settings: CaptionerSettings, files: ModelFiles) -> LoadedModel:
    import torch

    quiet_libraries()
    from transformers import AutoModelForImageTextToText, AutoProcessor

    device = pick_device(settings.device)
    dtype = pick_dtype(settings.dtype, device)
    try:
        processor = AutoProcessor.from_pretrained(files.folder)
        model = AutoModelForImageTextToText.from_pretrained(files.folder, dtype=getattr(torch, _TORCH_DTYPES[dtype]))
    except (OSError, ValueError, KeyError) as e:
        raise SdLoraError(f"--model {files.model!r}: transformers cannot load it as a {settings.backend} captioner "
                          f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}); check --backend matches "
                          "the model") from e
    return LoadedModel(processor, model.to(device).eval(), device, dtype)


def generate(loaded: LoadedModel, inputs, settings: CaptionerSettings):
    """Greedy or beam search (never sampling), so the same images and settings give the same captions."""
    import torch

    inputs = inputs.to(loaded.device)
    float_dtype = loaded.model.dtype
    for key, value in inputs.items():
        if torch.is_floating_point(value):
            inputs[key] = value.to(float_dtype)
    with torch.inference_mode():
        return loaded.model.generate(**inputs, max_new_tokens=settings.max_new_tokens, num_beams=settings.num_beams,
                                     do_sample=False)
