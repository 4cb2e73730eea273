"""Load a base model for generation on a chosen device and dtype (`auto` picks CUDA + fp16 when present)."""

from __future__ import annotations

import torch

from sd_lora.errors import SdLoraError

__all__ = ["DTYPES", "resolve_device", "load_generation_pipeline"]

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(device: str = "auto", dtype: str = "auto") -> tuple[torch.device, torch.dtype]:
    """`auto` device = cuda when available, else cpu; `auto` dtype = fp16 on cuda, fp32 on cpu."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SdLoraError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    if dtype == "auto":
        dtype = "fp16" if device.startswith("cuda") else "fp32"
    if dtype not in DTYPES:
        raise SdLoraError(f"--dtype {dtype!r} is unknown; choose auto, fp32, fp16 or bf16")
    if device == "cpu" and dtype == "fp16":
        raise SdLoraError("--dtype fp16 is not supported on the CPU; use fp32 or bf16")
    return torch.device(device), DTYPES[dtype]


def load_generation_pipeline(pretrained: str, *, device: str = "auto", dtype: str = "auto",
                             family: str | None = None, prediction_type: str | None = None):
    """(pipeline on the device, BaseModelInfo). Adapters are added afterwards with an AdapterSet. What the family
    says about the model (its variant, a licence note) is printed once, here."""
    from sd_lora.models.families import get_family
    from sd_lora.models.load import load_pipeline

    torch_device, torch_dtype = resolve_device(device, dtype)
    pipe, info = load_pipeline(pretrained, family=family, prediction_type=prediction_type, torch_dtype=torch_dtype)
    for line in get_family(info.family).describe(pipe):
        print(line)
    return pipe.to(torch_device), info
