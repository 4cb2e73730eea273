"""Florence-2 captions (transformers-native checkpoints, e.g. florence-community/Florence-2-large): a task token
such as <CAPTION>, <DETAILED_CAPTION> or <MORE_DETAILED_CAPTION> picks the caption's length."""

from __future__ import annotations

from PIL import Image

from sd_lora.captioning.captioner import CaptionerSettings
from sd_lora.captioning.generative import generate, load_image_text_model
from sd_lora.captioning.hub import ModelFiles
from sd_lora.errors import SdLoraError

__all__ = ["load", "FlorenceCaptioner", "CAPTION_TASKS"]

CAPTION_TASKS = ("<CAPTION>", "<DETAILED_CAPTION>", "<MORE_DETAILED_CAPTION>")


class FlorenceCaptioner:
    def __init__(self, settings: CaptionerSettings, files: ModelFiles):
        if settings.prompt not in CAPTION_TASKS:
            raise SdLoraError(f"--prompt {settings.prompt!r}: Florence-2 captions with one of the task tokens "
                              f"{', '.join(CAPTION_TASKS)}")
        self.settings, self.files = settings, files
        self._loaded = load_image_text_model(settings, files)
        self.device, self.dtype = self._loaded.device, self._loaded.dtype

    def caption(self, images: list[Image.Image]) -> list[str]:
        processor = self._loaded.processor
        inputs = processor(images=images, text=[self.settings.prompt] * len(images), return_tensors="pt")
        out = generate(self._loaded, inputs, self.settings)
        return [" ".join(t.split()) for t in processor.batch_decode(out, skip_special_tokens=True)]


def load(settings: CaptionerSettings, files: ModelFiles) -> FlorenceCaptioner:
    return FlorenceCaptioner(settings, files)
