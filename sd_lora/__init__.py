"""sd-lora: train, convert and use LoRA adapters for Stable Diffusion (SD 1.x, SD 2.x, SDXL)."""

__version__ = "0.1.0"
