"""Frozen Linear/Conv2d weights stored in a narrow dtype (float8, or bf16/fp16 under an fp32 run), cast per layer.

`apply_weight_storage(model, "fp8_e4m3fn", torch.bfloat16)` keeps every frozen `nn.Linear` / `nn.Conv2d`
weight in float8 and casts it to the input's dtype inside the layer's forward, one layer at a time, so the
model's frozen weights take 1 byte a parameter and only one layer's compute-dtype copy exists at once.

Why a custom autograd function and not a cast before `F.linear`: autograd would save the cast copy of every
layer for the backward pass (the input's gradient needs the weight), which holds a compute-dtype copy of the
whole model until backward. The function saves the stored (float8) weight and casts it again in backward.

peft: a LoRA layer calls its `base_layer(x)` and adds the adapter's output, so an adapter injected before or
after works unchanged. The converted layers carry `compute_dtype`, which peft reads (as for bitsandbytes
layers) to give adapters injected afterwards the compute dtype, not float8. DoRA reads the base weight itself,
so layers under a DoRA adapter are left in the compute dtype (apply after injecting). Merging an adapter into a
stored weight (`merge_adapter`, `fuse_lora`) is not supported; training never merges.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from sd_lora.errors import SdLoraError

__all__ = ["STORAGE_DTYPES", "StorageReport", "CastLinear", "CastConv2d", "apply_weight_storage", "storage_dtype",
           "compute_dtype"]

STORAGE_DTYPES = {
    "fp8_e4m3fn": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
    "fp32": torch.float32,
}


def storage_dtype(name: str) -> torch.dtype:
    """The torch dtype of a `model.weight_dtype` name (not 'auto', which the caller resolves)."""
    if name not in STORAGE_DTYPES:
        raise SdLoraError(f"model.weight_dtype: unknown storage dtype {name!r}; choose one of "
                          f"{', '.join(STORAGE_DTYPES)} (or 'auto')")
    return STORAGE_DTYPES[name]


class _CastLinearFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias):
        ctx.save_for_backward(weight)
        return F.linear(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype))

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        grad_x = grad.matmul(weight.to(grad.dtype)) if ctx.needs_input_grad[0] else None
        return grad_x, None, None  # weight and bias are frozen (trainable layers are never converted)


class _CastConv2dFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, stride, padding, dilation, groups):
        ctx.save_for_backward(weight)
        ctx.conv = (stride, padding, dilation, groups)
        ctx.input_shape = x.shape
        return F.conv2d(x, weight.to(x.dtype), None if bias is None else bias.to(x.dtype), stride, padding,
                        dilation, groups)

    @staticmethod
    def backward(ctx, grad):
        (weight,) = ctx.saved_tensors
        grad_x = None
        if ctx.needs_input_grad[0]:
            grad_x = torch.nn.grad.conv2d_input(ctx.input_shape, weight.to(grad.dtype), grad, *ctx.conv)
        return grad_x, None, None, None, None, None, None


class CastLinear(nn.Linear):
    """An `nn.Linear` whose frozen weight is stored in another dtype and cast to the input's dtype at use."""

    compute_dtype: torch.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _CastLinearFn.apply(x, self.weight, self.bias)


class CastConv2d(nn.Conv2d):
    """An `nn.Conv2d` (zero padding) whose frozen weight is stored in another dtype and cast at use."""

    compute_dtype: torch.dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _CastConv2dFn.apply(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)


@dataclass
class StorageReport:
    dtype: str
    layers: int = 0
    bytes_before: int = 0
    bytes_after: int = 0
    skipped: dict[str, str] = field(default_factory=dict)  # module name -> why it keeps its dtype

    @property
    def bytes_saved(self) -> int:
        return self.bytes_before - self.bytes_after

    def __str__(self) -> str:
        text = (f"weight storage {self.dtype}: {self.layers} layers, {self.bytes_before / 2**30:.2f} GiB -> "
                f"{self.bytes_after / 2**30:.2f} GiB ({self.bytes_saved / 2**30:.2f} GiB saved)")
        if self.skipped:
            reasons = sorted(set(self.skipped.values()))
            text += f"; {len(self.skipped)} layers kept their dtype ({'; '.join(reasons)})"
        return text


_CONVERTED = {nn.Linear: CastLinear, nn.Conv2d: CastConv2d}


def _skip_reason(module: nn.Module, dora_bases: set[int]) -> str | None:
    if id(module) in dora_bases:
        return "DoRA reads the base weight"
    if module.weight.requires_grad or (module.bias is not None and module.bias.requires_grad):
        return "trainable"
    if isinstance(module, nn.Conv2d) and (module.padding_mode != "zeros" or isinstance(module.padding, str)):
        return "conv padding mode"
    return None


def _dora_base_layers(model: nn.Module) -> set[int]:
    found = set()
    for module in model.modules():
        if getattr(module, "lora_magnitude_vector", None) and hasattr(module, "get_base_layer"):
            found.add(id(module.get_base_layer()))
    return found


def apply_weight_storage(model: nn.Module, dtype: str, compute_dtype: torch.dtype) -> StorageReport:
    """Store the frozen weights of `model`'s Linear and Conv2d layers in `dtype` (a STORAGE_DTYPES name),
    cast to the input's dtype at use. Biases, norms, embeddings and adapters keep their dtype; the rest of the
    model should already be in `compute_dtype`. Layers are converted in place (same module objects, hooks
    kept). Returns how many layers were converted and the bytes their weights took before and after."""
    target = storage_dtype(dtype)
    report = StorageReport(dtype)
    dora_bases = _dora_base_layers(model)
    for name, module in model.named_modules():
        cast_class = _CONVERTED.get(type(module))
        if cast_class is None:
            continue
        reason = _skip_reason(module, dora_bases)
        if reason:
            report.skipped[name] = reason
            continue
        weight = module.weight
        report.bytes_before += weight.numel() * weight.element_size()
        if weight.dtype != target:
            weight.data = weight.data.to(target)
        report.bytes_after += weight.numel() * weight.element_size()
        module.__class__ = cast_class  # a subclass without state of its own: hooks and peft's references stay
        module.compute_dtype = compute_dtype
        report.layers += 1
    return report


def compute_dtype(model: nn.Module) -> torch.dtype:
    """The dtype `model` computes in: its converted layers' compute dtype, else its parameters' (`model.dtype`
    would name the storage dtype of the first converted weight)."""
    for module in model.modules():
        if isinstance(module, (CastLinear, CastConv2d)):
            return module.compute_dtype
    return next(model.parameters()).dtype
