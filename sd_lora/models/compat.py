"""Keyword differences between the diffusers releases sd-lora supports."""

from __future__ import annotations

__all__ = ["dtype_kwarg"]


def dtype_kwarg(dtype) -> dict:
    """`dtype=` for diffusers releases that renamed it (they warn on `torch_dtype`); `torch_dtype=` for older ones,
    which would silently ignore an unknown `dtype` and load in fp32."""
    from diffusers.utils import deprecation_utils

    renamed = hasattr(deprecation_utils, "_TORCH_DTYPE_DEPRECATION_MESSAGE")
    return {"dtype" if renamed else "torch_dtype": dtype}
