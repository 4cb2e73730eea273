"""Generation for the studio's page and its AUTOMATIC1111-style API: one pipeline at a time, adapters by name.

Adapter names a client writes (`<lora:NAME:W>`, sliders) are looked up only among the studio's known adapters
(finished runs and the --lora-dir folders); a name is never taken as a path.
"""

from __future__ import annotations

import random
import threading
from dataclasses import dataclass
from pathlib import Path

from sd_lora.errors import SdLoraError
from sd_lora.inference.prompts import SEED_MAX, parse_prompt

__all__ = ["KnownAdapter", "Generator", "Generated"]


@dataclass(frozen=True)
class KnownAdapter:
    name: str
    path: Path
    source: str  # "run N" or the LoRA folder


@dataclass
class Generated:
    png: bytes
    parameters: str
    seed: int
    width: int
    height: int


class Generator:
    def __init__(self, device: str = "auto", dtype: str = "auto"):
        self.device, self.dtype = device, dtype
        self._lock = threading.Lock()  # one generation at a time: the pipeline and its adapters are shared
        self._model: str | None = None
        self._pipe = self._info = self._adapters = None

    def _load(self, model: str) -> None:
        if self._model == model:
            return
        from sd_lora.inference import AdapterSet, load_generation_pipeline

        self._pipe = self._info = self._adapters = None
        pipe, info = load_generation_pipeline(model, device=self.device, dtype=self.dtype)
        self._pipe, self._info, self._model = pipe, info, model
        self._adapters = AdapterSet(pipe, family=info.family)

    def generate(self, model: str, known: dict[str, KnownAdapter], *, prompt: str, negative_prompt: str = "",
                 seed: int = -1, steps: int = 20, cfg_scale: float = 7.0, sampler: str = "Euler a",
                 width: int | None = None, height: int | None = None, batch_size: int = 1,
                 loras: list[tuple[str, float]] = ()) -> list[Generated]:
        from sd_lora.inference import GenerationRequest, canonical_scheduler, format_parameters, generate_images, \
            set_scheduler
        from sd_lora.inference.prompts import check_seed

        if not 1 <= steps <= 150:
            raise SdLoraError(f"steps: must be between 1 and 150, got {steps}")
        if not 1 <= batch_size <= 8:
            raise SdLoraError(f"batch_size: must be between 1 and 8, got {batch_size}")
        for name, value in (("width", width), ("height", height)):
            if value is not None and not (8 <= value <= 2048 and value % 8 == 0):
                raise SdLoraError(f"{name}: must be a multiple of 8 between 8 and 2048, got {value}")
        sampler = canonical_scheduler(sampler)
        seed = random.randint(0, SEED_MAX) if seed is None or seed < 0 else check_seed(seed, "seed")
        _, tags = parse_prompt(prompt)
        names = [t.name for t in tags] + [name for name, _ in loras]
        missing = [n for n in names if n not in known]
        if missing:
            raise SdLoraError(f"LoRA {missing[0]!r} is not known to the studio; known: "
                              f"{', '.join(sorted(known)) or 'none (finish a run or start with --lora-dir)'}")
        with self._lock:
            self._load(model)
            for name in dict.fromkeys(names):
                self._adapters.add(known[name].path, name)
            set_scheduler(self._pipe, sampler)
            requests = [GenerationRequest(prompt=prompt, negative_prompt=negative_prompt, seed=seed + i, steps=steps,
                                          guidance=cfg_scale, width=width, height=height, loras=list(loras))
                        for i in range(batch_size)]
            images = generate_images(self._pipe, requests, adapters=self._adapters, progress=False)
            out = []
            for im in images:
                import io

                from PIL import PngImagePlugin

                parameters = format_parameters(im, self._info.name)
                info = PngImagePlugin.PngInfo()
                info.add_text("parameters", parameters)
                buf = io.BytesIO()
                im.image.save(buf, format="PNG", pnginfo=info)
                out.append(Generated(buf.getvalue(), parameters, im.request.seed, im.width, im.height))
            return out
