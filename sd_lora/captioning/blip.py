"""BLIP and BLIP-2 captions (transformers): one sentence per image, optionally continuing a text prefix."""

from __future__ import annotations

from PIL import Image

from sd_lora.captioning.captioner import CaptionerSettings
from sd_lora.captioning.generative import generate, load_image_text_model
from sd_lora.captioning.hub import ModelFiles

__all__ = ["load", "BlipCaptioner"]


class BlipCaptioner:
    def __init__(self, settings: CaptionerSettings, files: ModelFiles):
        self.settings, self.files = settings, files
        self._loaded = load_image_text_model(settings, files)
        self.device, self.dtype = self._loaded.device, self._loaded.dtype

    def caption(self, images: list[Image.Image]) -> list[str]:
        prefix = self.settings.prompt
        processor = self._loaded.processor
        kwargs = {"text": [prefix] * len(images)} if prefix else {}
        inputs = processor(images=images, return_tensors="pt", padding=True, **kwargs)
        out = generate(self._loaded, inputs, self.settings)
        texts = [" ".join(t.split()) for t in processor.batch_decode(out, skip_special_tokens=True)]
        # BLIP returns the prefix with its continuation; keep it either way so every caption reads as one sentence.
        return [t if not prefix or t.startswith(prefix) else f"{prefix} {t}" for t in texts]

def load(settings: CaptionerSettings, files: ModelFiles) -> BlipCaptioner:
    return BlipCaptioner(settings, files)
