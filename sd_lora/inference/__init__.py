"""Image generation with adapters: requests, schedulers by name, mixed-adapter batches, fuse, PNGs, grids.

Public API (the training loop's samples use the first four):
- `GenerationRequest(prompt, negative_prompt, seed, steps, guidance, width, height, loras, clip_skip)`
- `generate_images(pipeline, requests, *, adapters=None, batch_size=1, progress=True) -> list[GeneratedImage]`
- `make_grid(images, labels=None, *, cols=None, row_labels=None, col_labels=None) -> PIL.Image`
- `set_scheduler(pipeline, name) -> display name`
- `AdapterSet(pipe, family=None, lora_dir=None)`: `add`, `load`, `activate`, `fuse`, `unfuse`
- `load_generation_pipeline(pretrained, device="auto", dtype="auto") -> (pipe, BaseModelInfo)`
- PNG: `format_parameters`, `image_record`, `save_png`, `read_parameters`; prompts: `parse_prompt`, ...
"""

from sd_lora.inference.adapters import AdapterSet, apply_adapter, lora_hash
from sd_lora.inference.generate import (
    GeneratedImage,
    GenerationRequest,
    UsedLora,
    generate_images,
    iter_images,
    sweep_requests,
)
from sd_lora.inference.grid import make_grid
from sd_lora.inference.pipeline import load_generation_pipeline, resolve_device
from sd_lora.inference.png import format_parameters, image_record, read_parameters, save_png
from sd_lora.inference.prompts import LoraRef, parse_lora_arg, parse_prompt, parse_seeds, read_prompt_file
from sd_lora.inference.schedulers import SCHEDULERS, canonical_scheduler, scheduler_name, set_scheduler

__all__ = [
    "AdapterSet", "GeneratedImage", "GenerationRequest", "LoraRef", "SCHEDULERS", "UsedLora", "apply_adapter",
    "canonical_scheduler", "format_parameters", "generate_images", "image_record", "iter_images",
    "load_generation_pipeline", "lora_hash", "make_grid", "parse_lora_arg", "parse_prompt", "parse_seeds",
    "read_parameters", "read_prompt_file", "resolve_device", "save_png", "scheduler_name", "set_scheduler",
    "sweep_requests",
]
