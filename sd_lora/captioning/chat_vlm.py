"""Chat vision-language models (Qwen2.5-VL, LLaVA family, SmolVLM, ...) through their processor's chat template:
the instruction (--prompt) says what kind of caption to write."""

from __future__ import annotations

from PIL import Image

from sd_lora.captioning.captioner import CaptionerSettings
from sd_lora.captioning.generative import generate, load_image_text_model
from sd_lora.captioning.hub import ModelFiles
from sd_lora.errors import SdLoraError

__all__ = ["load", "ChatCaptioner"]


class ChatCaptioner:
    def __init__(self, settings: CaptionerSettings, files: ModelFiles):
        if not settings.prompt.strip():
            raise SdLoraError("--prompt: a chat model needs an instruction (e.g. 'Describe this image in one "
                              "paragraph')")
        self.settings, self.files = settings, files
        self._loaded = load_image_text_model(settings, files)
        self.device, self.dtype = self._loaded.device, self._loaded.dtype
        processor = self._loaded.processor
        if getattr(processor, "chat_template", None) is None:
            raise SdLoraError(f"--model {files.model!r}: its processor has no chat template; use an instruct/chat "
                              "model, or --backend blip/florence2 for a plain captioner")
        messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": settings.prompt}]}]
        self._prompt = processor.apply_chat_template(messages, add_generation_prompt=True)
        # Batched generation pads prompts; decoder-only models need the padding on the left.
        tokenizer = getattr(processor, "tokenizer", None)
        if tokenizer is not None:
            tokenizer.padding_side = "left"

    def caption(self, images: list[Image.Image]) -> list[str]:
        processor = self._loaded.processor
        inputs = processor(images=images, text=[self._prompt] * len(images), return_tensors="pt", padding=True)
        out = generate(self._loaded, inputs, self.settings)
        new_tokens = out[:, inputs["input_ids"].shape[1]:]
        return [" ".join(t.split()) for t in processor.batch_decode(new_tokens, skip_special_tokens=True)]


def load(settings: CaptionerSettings, files: ModelFiles) -> ChatCaptioner:
    return ChatCaptioner(settings, files)
