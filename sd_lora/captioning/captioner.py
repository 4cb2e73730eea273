"""The one interface every captioning backend implements, its settings, and the registry that loads one.

A backend is a module with `load(settings, files) -> Captioner`; the Captioner turns a batch of RGB images into
one caption per image. Settings are a plain dataclass so a run can be recorded and repeated exactly.
"""

from __future__ import annotations

import importlib
from dataclasses import asdict, dataclass, fields
from typing import Protocol

from PIL import Image

from sd_lora.captioning.hub import ModelFiles, resolve_model
from sd_lora.errors import SdLoraError

__all__ = ["Captioner", "CaptionerSettings", "BACKENDS", "DEFAULT_MODELS", "DEFAULT_MASK_MODEL", "load_captioner",
           "pick_device", "pick_dtype"]

# backend -> module under sd_lora.captioning
BACKENDS = {"blip": "blip", "florence2": "florence", "vlm": "chat_vlm", "wd14": "wd_tagger"}
DEFAULT_MODELS = {
    "blip": "Salesforce/blip-image-captioning-large",
    # The transformers-native conversion; microsoft/Florence-2-* needs trust_remote_code, which sd-lora never sets.
    "florence2": "florence-community/Florence-2-large",
    "vlm": "Qwen/Qwen2.5-VL-3B-Instruct",
    "wd14": "SmilingWolf/wd-eva02-large-tagger-v3",
}
# CLIPSeg for `sd-lora masks` (named here, with the captioners, so the CLI can show it without loading torch).
DEFAULT_MASK_MODEL = "CIDAS/clipseg-rd64-refined"
DEFAULT_PROMPTS = {
    "blip": "",  # unconditional; e.g. "a photo of" makes BLIP continue that text
    "florence2": "<MORE_DETAILED_CAPTION>",
    "vlm": "Describe this image in one detailed paragraph for training an image generator: subject, clothing, "
           "pose, setting, lighting, style. Do not start with 'The image shows'.",
    "wd14": "",
}


@dataclass(frozen=True)
class CaptionerSettings:
    backend: str = "florence2"
    model: str = ""  # hub id or folder; empty: the backend's default (filled in)
    revision: str | None = None
    device: str = "auto"  # auto: cuda when available, else cpu
    dtype: str = "auto"  # auto: bf16 on a GPU that supports it, else fp32
    batch_size: int = 4
    prompt: str | None = None  # BLIP text prefix, Florence-2 task token, VLM instruction; None: the default (filled in)
    max_new_tokens: int = 120
    num_beams: int = 3
    threshold: float = 0.35  # tagger: general tags at or above it
    character_threshold: float = 0.85  # tagger: character tags at or above it
    blacklist: tuple[str, ...] = ()
    whitelist: tuple[str, ...] = ()  # tagger: when set, only these tags are kept
    replace_underscores: bool = True
    include_rating: bool = False

    def __post_init__(self):
        problems = []
        if self.backend not in BACKENDS:
            problems.append(f"backend {self.backend!r} is not one of {', '.join(BACKENDS)}")
        if self.batch_size < 1:
            problems.append(f"batch size must be 1 or more, got {self.batch_size}")
        if self.max_new_tokens < 1 or self.num_beams < 1:
            problems.append("max new tokens and beams must be 1 or more")
        for name in ("threshold", "character_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name.replace('_', ' ')} must be in [0, 1], got {getattr(self, name)}")
        if self.dtype not in ("auto", "bf16", "fp16", "fp32"):
            problems.append(f"dtype {self.dtype!r} is not one of auto, bf16, fp16, fp32")
        if problems:
            raise SdLoraError("; ".join(problems))
        # Defaults are filled in here, so the recorded settings say exactly what ran.
        object.__setattr__(self, "model", self.model or DEFAULT_MODELS[self.backend])
        object.__setattr__(self, "prompt", DEFAULT_PROMPTS[self.backend] if self.prompt is None else self.prompt)

    def as_record(self) -> dict:
        return {**asdict(self), "blacklist": list(self.blacklist), "whitelist": list(self.whitelist)}

    @classmethod
    def from_record(cls, record: dict) -> "CaptionerSettings":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(record) - known)
        if unknown:
            raise SdLoraError(f"recorded caption settings have unknown keys {unknown}; were they written by a newer "
                              "sd-lora?")
        values = dict(record)
        for name in ("blacklist", "whitelist"):
            values[name] = tuple(values.get(name, ()))
        return cls(**values)


class Captioner(Protocol):
    settings: CaptionerSettings
    files: ModelFiles
    device: str
    dtype: str  # as used, e.g. "bf16"

    def caption(self, images: list[Image.Image]) -> list[str]:
        """One caption per image, in order."""


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SdLoraError(f"--device {device}: no CUDA GPU is visible to torch; use --device cpu (or auto)")
    return device


def pick_dtype(dtype: str, device: str) -> str:
    """bf16 where the device supports it (halves memory, same range as fp32); fp32 on CPU, where bf16 matmuls are
    slower on most processors."""
    import torch

    if dtype != "auto":
        return dtype
    if device.startswith("cuda") and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


_NEEDED = {"blip": ("config.json",), "florence2": ("config.json",), "vlm": ("config.json",),
           "wd14": ("model.onnx", "selected_tags.csv")}


def load_captioner(settings: CaptionerSettings) -> Captioner:
    files = resolve_model(settings.model, _NEEDED[settings.backend], "--model", settings.revision)
    module = importlib.import_module(f"sd_lora.captioning.{BACKENDS[settings.backend]}")
    return module.load(settings, files)
