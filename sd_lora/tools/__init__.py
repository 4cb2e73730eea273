"""LoRA tools: merge, resize, extract, bake (kohya's merge_lora / svd_merge_lora / resize_lora /
extract_lora_from_models), as library functions over adapter files and models.

- `merge_adapters(["A.safetensors:0.7", "B.safetensors:0.3"], out, method="concat"|"svd", rank=, conv_rank=)`
- `resize_adapter(path, out, rank=R | dynamic="sv_ratio"|"sv_fro"|"sv_cumulative", param=X, conv_rank=)`
- `extract_adapter(base, tuned, out, rank=R, conv_rank=, text_encoder="auto"|"on"|"off", min_diff=, clamp_quantile=)`
- `bake_adapters(model, ["A.safetensors:0.8"], out, save_precision="fp16")`
- `effective_ranks(path)` (what `sd-lora inspect --ranks` prints)
"""

from __future__ import annotations

import importlib

__all__ = ["merge_adapters", "resize_adapter", "extract_adapter", "bake_adapters", "effective_ranks"]

_WHERE = {"merge_adapters": "merge", "resize_adapter": "resize", "extract_adapter": "extract",
          "bake_adapters": "bake", "effective_ranks": "ranks"}


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"sd_lora.tools.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'sd_lora.tools' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
