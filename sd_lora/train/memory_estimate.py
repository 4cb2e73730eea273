"""What a training run will need in memory, before it runs: weights, adapters, gradients, optimiser state and
activations at the configured resolution and batch (`sd-lora train --dry-run`, and `gradient_checkpointing =
"auto"`).

Activations are not a formula per architecture: a family supplies a function that says what its denoiser saves
for backward (`ACTIVATION_FIGURES`). For the diffusers UNets (SD1/SD2/SDXL) that function runs the model's own
forward on the meta device (no memory, no arithmetic; about a second for SD1) with its adapters injected, and
adds up the tensors autograd saves, counting each storage once and the frozen weights not at all. Two things
meta cannot reproduce are modelled: attention runs the fused kernel of the real devices (which keeps q, k, v,
the output and one log-sum-exp row, not the N x N probabilities that meta's fallback would), and under gradient
checkpointing every segment keeps only its inputs, its saved tensors coming back one segment at a time in
backward. scripts/check_memory_estimate.py compares the total with measured peaks.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import torch

__all__ = ["ActivationFigure", "MemoryEstimate", "estimate_memory", "unet_activations", "ACTIVATION_FIGURES",
           "OPTIMIZER_STATE_BYTES", "PROCESS_OVERHEAD_BYTES", "free_memory", "checkpointing_decision"]

GiB = 2**30

# Optimiser state per trained (fp32) parameter, in bytes.
OPTIMIZER_STATE_BYTES = {"adamw": 8, "adamw8bit": 2, "prodigy": 16, "adafactor": 4, "lion": 4,
                         "adamw_schedulefree": 8, "came": 12}

# The process without its models: 0.36 GiB RSS after the imports (Python, torch 2.13 CPU, diffusers, transformers,
# peft, sd-lora; measured), plus the loop's own (data loader, accelerate, oneDNN scratch): a builtin:tiny run
# peaks at 0.43 GiB. On a GPU the figures are device memory and this is 0.
PROCESS_OVERHEAD_BYTES = {"cpu": int(0.45 * GiB), "cuda": 0}

# Backward's working set on top of what forward saved: the gradient flowing back (the size of the largest
# activation), the gradient of the tensor it meets, and the kernel's scratch: this many times the largest
# saved tensor (a model, not a fit; scripts/check_memory_estimate.py checks the total against measured peaks).
BACKWARD_WORKING_SET = 3


@dataclass(frozen=True)
class ActivationFigure:
    saved: int  # bytes held from forward until backward uses them
    transient: int  # the most held on top of that at one time in backward


def _size(n: int) -> str:
    return f"{n / GiB:.2f} GiB" if n >= GiB else f"{n / 2**20:.1f} MiB"


@dataclass(frozen=True)
class MemoryEstimate:
    overhead: int
    weights_loaded: int  # every component as loaded (the peak of loading and caching)
    weights_training: int  # what stays while training (encoders freed once their outputs are cached)
    adapters: int
    gradients: int
    optimizer: int
    activations: ActivationFigure

    @property
    def loading(self) -> int:
        return self.overhead + self.weights_loaded

    @property
    def training(self) -> int:
        a = self.activations
        return (self.overhead + self.weights_training + self.adapters + self.gradients + self.optimizer
                + a.saved + a.transient)

    @property
    def peak(self) -> int:
        return max(self.loading, self.training)

    def lines(self, device: str) -> list[str]:
        a, g = self.activations, _size
        where = "process RSS" if device == "cpu" else f"{device} memory"
        return [f"Memory estimate ({where}): peak {g(self.peak)} "
                f"({'training' if self.training >= self.loading else 'loading and caching'})",
                f"  runtime {g(self.overhead)} · weights {g(self.weights_training)} while training "
                f"({g(self.weights_loaded)} while loading) · adapters {g(self.adapters)} · gradients "
                f"{g(self.gradients)} · optimiser {g(self.optimizer)} · activations {g(a.saved)} saved + "
                f"{g(a.transient)} in backward"]


def estimate_memory(weights_loaded: int, weights_training: int, adapter_params: int, optimizer: str,
                    activations: ActivationFigure, fused_backward: bool = False, device: str = "cpu") -> MemoryEstimate:
    """The estimate from explicit figures: weight bytes (as loaded, and as kept while training), the number of
    trained (fp32) parameters, the optimiser's name and the family's activation figure."""
    return MemoryEstimate(
        overhead=PROCESS_OVERHEAD_BYTES.get(device, 0), weights_loaded=weights_loaded,
        weights_training=weights_training, adapters=4 * adapter_params,
        gradients=0 if fused_backward else 4 * adapter_params,
        optimizer=OPTIMIZER_STATE_BYTES.get(optimizer, 8) * adapter_params, activations=activations)


class _SavedTensors:
    """Counts the storages autograd saves (each once, parameters never); inside a checkpointed segment the
    count goes to that segment, whose total is only held while backward recomputes it."""

    def __init__(self, skip: set[int]):
        self.skip, self.seen, self.held = skip, set(), []
        self.persistent, self.largest, self.largest_segment = 0, 0, 0
        self.segment: list[int] | None = None

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        key = storage._cdata
        if key not in self.skip and key not in self.seen:
            self.seen.add(key)
            self.held.append(storage)  # alive until the count ends, so no later storage reuses its address
            size = storage.nbytes()
            self.largest = max(self.largest, size)
            if self.segment is not None:
                self.segment[0] += size
            else:
                self.persistent += size
        return t

    def add(self, nbytes: int) -> None:
        self.largest = max(self.largest, nbytes)
        if self.segment is not None:
            self.segment[0] += nbytes
        else:
            self.persistent += nbytes

    def checkpointed(self, fn, *args, **kwargs):
        for a in args:  # a checkpointed segment keeps its inputs for the recompute
            if isinstance(a, torch.Tensor):
                self.pack(a)
        outer, self.segment = self.segment, [0]
        try:
            return fn(*args, **kwargs)
        finally:
            self.largest_segment = max(self.largest_segment, self.segment[0])
            self.segment = outer


@contextlib.contextmanager
def _fused_attention(counter: _SavedTensors):
    """F.scaled_dot_product_attention as the real devices' fused kernels save it (meta would pick the math
    fallback and save N x N probabilities)."""
    import torch.nn.functional as F

    original = F.scaled_dot_product_attention

    def attention(q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, **kwargs):
        out = q.new_empty((*q.shape[:-1], v.shape[-1]))
        if torch.is_grad_enabled() and any(x.requires_grad for x in (q, k, v)):
            out = out + (q.sum() + k.sum() + v.sum()) * 0  # carries requires_grad; saves nothing itself
            for x in (q, k, v, out):
                counter.pack(x)
            counter.add(q.shape[:-1].numel() * 4)  # fp32 log-sum-exp per query row
        return out

    F.scaled_dot_product_attention = attention
    try:
        yield
    finally:
        F.scaled_dot_product_attention = original


def unet_activations(unet_config: dict, latent_hw: tuple[int, int], batch: int, dtype: torch.dtype,
                     checkpointing: bool, inject: Callable[[torch.nn.Module], object], text_tokens: int = 77
                     ) -> ActivationFigure:
    """Activation memory of a diffusers UNet2DConditionModel training step: the model built from `unet_config`
    on the meta device in `dtype` (the autocast dtype: adapter inputs are cast to it), `inject` adds the
    adapters, one forward at `latent_hw` x `batch`."""
    from diffusers import UNet2DConditionModel

    config = {k: v for k, v in unet_config.items() if not k.startswith("_")}
    with torch.device("meta"), _quiet():
        unet = UNet2DConditionModel.from_config(config).to(dtype)
    unet.requires_grad_(False)
    inject(unet)
    counter = _SavedTensors({p.untyped_storage()._cdata for p in unet.parameters()})
    if checkpointing:
        unet.enable_gradient_checkpointing()
        for module in unet.modules():
            if getattr(module, "gradient_checkpointing", False):
                module._gradient_checkpointing_func = counter.checkpointed
    unet.train()
    meta = dict(device="meta", dtype=dtype)
    sample = torch.empty(batch, unet.config.in_channels, *latent_hw, **meta)
    context = torch.empty(batch, text_tokens, unet.config.cross_attention_dim, **meta)
    added = None
    if unet.config.addition_embed_type == "text_time":  # SDXL: pooled text embedding + 6 size/crop numbers
        pooled = unet.config.projection_class_embeddings_input_dim - 6 * unet.config.addition_time_embed_dim
        added = {"text_embeds": torch.empty(batch, pooled, **meta), "time_ids": torch.empty(batch, 6, **meta)}
    with torch.autograd.graph.saved_tensors_hooks(counter.pack, lambda t: t), _fused_attention(counter):
        unet(sample, torch.zeros(batch, dtype=torch.long, device="meta"), context, added_cond_kwargs=added)
    return ActivationFigure(counter.persistent, counter.largest_segment + BACKWARD_WORKING_SET * counter.largest)


@contextlib.contextmanager
def _quiet():
    from diffusers.utils import logging

    level = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(level)


# the kind of denoiser (`Family.denoiser`) -> the function giving its activation figure (same signature as
# unet_activations); the transformer families have none yet
ACTIVATION_FIGURES: dict[str, Callable[..., ActivationFigure]] = {"unet": unet_activations}


def free_memory(device: torch.device | str) -> int | None:
    """Bytes the run can still take on `device`: MemAvailable (Linux) on the CPU, the driver's free figure on
    CUDA; None where it is not known."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    if device.type == "cpu":
        try:
            for line in open("/proc/meminfo", encoding="ascii"):
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def checkpointing_decision(requested: bool | str, needed: int, free: int | None) -> tuple[bool, str]:
    """train.gradient_checkpointing resolved: `needed` is what training adds on top of what is already
    allocated (without checkpointing), `free` what the device has left. Returns (on, reason)."""
    if requested is not True and requested is not False and requested != "auto":
        raise ValueError(requested)
    if requested != "auto":
        return bool(requested), "set in the config"
    if free is None:
        return False, "free memory unknown on this device, so off"
    need, have = _size(needed), _size(free)
    if needed > free:
        return True, f"auto: training without it needs ~{need}, more than the {have} free"
    return False, f"auto: training needs ~{need}, the device has {have} free"
