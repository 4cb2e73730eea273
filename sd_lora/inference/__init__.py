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

import importlib

# name -> submodule. Imported on first use, so `sd_lora.inference.schedulers` (the config checks sampler
# names with it) loads without torch and diffusers.
_EXPORTS = {
    "AdapterSet": "adapters", "apply_adapter": "adapters", "lora_hash": "adapters",
    "GeneratedImage": "generate", "GenerationRequest": "generate", "UsedLora": "generate",
    "generate_images": "generate", "iter_images": "generate", "sweep_requests": "generate",
    "make_grid": "grid",
    "load_generation_pipeline": "pipeline", "resolve_device": "pipeline",
    "format_parameters": "png", "image_record": "png", "read_parameters": "png", "save_png": "png",
    "LoraRef": "prompts", "parse_lora_arg": "prompts", "parse_prompt": "prompts", "parse_seeds": "prompts",
    "read_prompt_file": "prompts",
    "SCHEDULERS": "schedulers", "canonical_scheduler": "schedulers", "scheduler_name": "schedulers",
    "set_scheduler": "schedulers",
}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "AdapterSet", "GeneratedImage", "GenerationRequest", "LoraRef", "SCHEDULERS", "UsedLora", "apply_adapter",
    "canonical_scheduler", "format_parameters", "generate_images", "image_record", "iter_images",
    "load_generation_pipeline", "lora_hash", "make_grid", "parse_lora_arg", "parse_prompt", "parse_seeds",
    "read_parameters", "read_prompt_file", "resolve_device", "save_png", "scheduler_name", "set_scheduler",
    "sweep_requests",
]
