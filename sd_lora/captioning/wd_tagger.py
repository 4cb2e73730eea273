"""Booru-style tags from the WD tagger family (SmilingWolf/wd-*-tagger-v3, wd-v1-4-*): model.onnx + selected_tags.csv.

Run with onnxruntime, as the models are published and as kohya's tagger runs them: the timm route would need
torchvision (a second multi-GB CUDA stack next to torch) and conversion of each checkpoint, for the same numbers.

Tags come out character tags first, then general tags by confidence; rating tags only when asked.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from sd_lora.captioning.captioner import CaptionerSettings, pick_device
from sd_lora.captioning.hub import ModelFiles
from sd_lora.errors import SdLoraError

__all__ = ["load", "WdTagger", "Tag", "read_tag_list", "select_tags", "KAOMOJI"]

# selected_tags.csv categories
_RATING, _GENERAL, _CHARACTER = 9, 0, 4
# Tags whose underscore is part of the face they draw, so "replace underscores" must leave them alone.
KAOMOJI = frozenset({"0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9",
                     ">_o", "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||"})


@dataclass(frozen=True)
class Tag:
    name: str  # as in the tag list (underscores)
    category: int


def read_tag_list(path: Path) -> list[Tag]:
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        return [Tag(row["name"], int(row["category"])) for row in rows]
    except (OSError, KeyError, ValueError, UnicodeDecodeError) as e:
        raise SdLoraError(f"{path}: not a tagger tag list (a CSV with name and category columns): {e}") from None


def _display(name: str, replace_underscores: bool) -> str:
    return name.replace("_", " ") if replace_underscores and name not in KAOMOJI else name


def select_tags(probs: np.ndarray, tags: list[Tag], settings: CaptionerSettings) -> list[str]:
    """The tags of one image (`probs`: one probability per tag) after thresholds and black/white lists."""
    def norm(t: str) -> str:
        return t.strip().replace(" ", "_")

    blacklist = {norm(t) for t in settings.blacklist}
    whitelist = {norm(t) for t in settings.whitelist}

    def wanted(tag: Tag) -> bool:
        return tag.name not in blacklist and (not whitelist or tag.name in whitelist)

    picked: dict[int, list[tuple[float, str]]] = {_RATING: [], _GENERAL: [], _CHARACTER: []}
    for tag, p in zip(tags, probs.tolist()):
        if tag.category == _RATING or not wanted(tag):
            continue
        limit = settings.character_threshold if tag.category == _CHARACTER else settings.threshold
        if p >= limit:
            picked[_CHARACTER if tag.category == _CHARACTER else _GENERAL].append((p, tag.name))
    if settings.include_rating:
        ratings = [(p, t.name) for t, p in zip(tags, probs.tolist()) if t.category == _RATING and wanted(t)]
        picked[_RATING] = [max(ratings)] if ratings else []
    ordered = [name for cat in (_CHARACTER, _GENERAL, _RATING)
               for _, name in sorted(picked[cat], key=lambda pn: (-pn[0], pn[1]))]
    return [_display(n, settings.replace_underscores) for n in ordered]


class WdTagger:
    def __init__(self, settings: CaptionerSettings, files: ModelFiles):
        try:
            import onnxruntime as ort
        except ImportError:
            raise SdLoraError("the wd14 tagger runs with onnxruntime, which is not installed: "
                              "pip install 'sd-lora[captions]' (or onnxruntime-gpu for CUDA)") from None
        self.settings, self.files = settings, files
        self.tags = read_tag_list(files.folder / "selected_tags.csv")
        self.device = pick_device(settings.device)
        self.dtype = "fp32"  # the published ONNX graphs are float32
        providers = ["CPUExecutionProvider"]
        if self.device.startswith("cuda") and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self._session = ort.InferenceSession(str(files.folder / "model.onnx"), providers=providers)
        except Exception as e:  # onnxruntime raises its own exception types for bad or unsupported graphs
            raise SdLoraError(f"--model {files.model!r}: onnxruntime cannot load model.onnx ({e})") from e
        self.providers = self._session.get_providers()
        node = self._session.get_inputs()[0]
        self._input = node.name
        self._fixed_batch = node.shape[0] if isinstance(node.shape[0], int) else None
        self.size = int(node.shape[1])  # NHWC, square
        outputs = self._session.get_outputs()[0].shape[-1]
        if isinstance(outputs, int) and outputs != len(self.tags):
            raise SdLoraError(f"--model {files.model!r}: model.onnx scores {outputs} tags but selected_tags.csv lists "
                              f"{len(self.tags)}; the two files come from different models")

    def _prepare(self, im: Image.Image) -> np.ndarray:
        """Pad to a white square, resize to the model's input, BGR float 0-255: what the WD taggers were trained on."""
        side = max(im.size)
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(im, ((side - im.width) // 2, (side - im.height) // 2))
        arr = np.asarray(square.resize((self.size, self.size), Image.Resampling.BICUBIC), dtype=np.float32)
        return arr[:, :, ::-1]

    def probabilities(self, images: list[Image.Image]) -> np.ndarray:
        batch = np.stack([self._prepare(im) for im in images])
        if self._fixed_batch == 1:
            return np.concatenate([self._session.run(None, {self._input: batch[i:i + 1]})[0] for i in range(len(batch))])
        return self._session.run(None, {self._input: batch})[0]

    def caption(self, images: list[Image.Image]) -> list[str]:
        return [", ".join(select_tags(p, self.tags, self.settings)) for p in self.probabilities(images)]


def load(settings: CaptionerSettings, files: ModelFiles) -> WdTagger:
    return WdTagger(settings, files)
