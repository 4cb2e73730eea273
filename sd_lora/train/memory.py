"""Memory of a training run: the frozen encoders leave once their outputs are cached, and allocator settings.

Once latents (text-encoder outputs) are cached and nothing else needs the VAE (text encoders) — no sample
images, no validation set (it is encoded per step), no text-encoder training; class images are made before
the caches — they are released: on the CPU their weights are freed (the modules stay, on the meta device, so
their structure can still be inspected) and the freed memory handed back to the OS; on a GPU they move to the
CPU, and `encoders_for_sampling` brings them back for the length of a sample. `restore_encoders` reloads freed
weights from the base model, for a caller that wants the full pipeline after training.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import sys
from dataclasses import dataclass, field

import torch

__all__ = ["Released", "release_encoders", "restore_encoders", "encoders_for_sampling", "trim_heap", "tune_cpu_allocator"]


@dataclass
class Released:
    """The frozen encoders that left the device: their names and modules, and how ('cpu' or 'freed')."""

    modules: dict = field(default_factory=dict)  # name ('vae', 'text_encoder', ...) -> module
    how: str | None = None
    weight_dtype: torch.dtype = torch.float32  # the text encoders' dtype during training (the VAE is fp32)


def release_encoders(vae, text_encoders: dict, latents_cached: bool, texts_cached: bool, *, device,
                     validation: bool, sampling: bool, train_text_encoder: bool,
                     weight_dtype: torch.dtype = torch.float32) -> Released:
    """Free (CPU) or offload (GPU) the VAE / text encoders nothing needs any more; returns what was released.
    The validation set is encoded at every validation, so it keeps both; samples keep them on the CPU and
    let a GPU run offload them between samples."""
    offload = device.type != "cpu"
    free = not validation and (offload or not sampling)
    modules = {}
    if latents_cached and free:
        modules["vae"] = vae
    if texts_cached and free and not train_text_encoder:
        modules.update(text_encoders)
    if not modules:
        return Released()
    for module in modules.values():
        if not getattr(module, "is_quantized", False):
            module.to("cpu" if offload else "meta")
    gc.collect()
    if offload:
        torch.cuda.empty_cache() if device.type == "cuda" else None
    else:
        trim_heap()
    what = "moved to the CPU (back on the GPU only for samples)" if offload else "freed (outputs are cached)"
    print(f"memory: {', '.join(n.replace('_', ' ') for n in modules)} {what}")
    return Released(modules, "cpu" if offload else "freed", weight_dtype)


@contextlib.contextmanager
def encoders_for_sampling(released: Released, device, reload):
    """Offloaded encoders back on the training device for a sample, then off it again; freed ones are reloaded
    for good through `reload()` (which returns the fresh pipeline). A no-op when nothing was released."""
    if released.how == "freed":
        restore_encoders(released, reload(), device)
    modules = list(released.modules.values()) if released.how == "cpu" else []
    for module in modules:
        module.to(device)
    try:
        yield
    finally:
        for module in modules:
            module.to("cpu")
        if modules and device.type == "cuda":
            torch.cuda.empty_cache()


def restore_encoders(released: Released, fresh, device, weight_dtype: torch.dtype | None = None) -> None:
    """Reload freed encoder weights from `fresh` (the base pipeline loaded again): the VAE in fp32, the text
    encoders in `weight_dtype` (default: the dtype they were trained beside), on `device`."""
    if released.how != "freed":
        return
    weight_dtype = weight_dtype or released.weight_dtype
    for name, module in released.modules.items():
        source = getattr(fresh, name)
        dtype = torch.float32 if name == "vae" else weight_dtype
        module.load_state_dict({k: v.to(device, dtype) for k, v in source.state_dict().items()}, assign=True)
        saved = set(source.state_dict())
        for key, buffer in source.named_buffers():  # non-persistent buffers (CLIP's position_ids) too
            if key not in saved:
                owner, _, leaf = key.rpartition(".")
                module.get_submodule(owner)._buffers[leaf] = buffer.to(device)
        module.requires_grad_(False)
    released.modules, released.how = {}, None


def trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc's malloc_trim; nothing elsewhere)."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)


def tune_cpu_allocator(enabled: bool) -> bool:
    """glibc: keep freed activation memory in the process instead of returning it to the OS every step
    (mmap threshold 32 MiB, no trimming below 16 GiB), so a CPU step does not re-fault ~800 k pages. Returns
    whether it was applied (Linux/glibc only)."""
    if not enabled or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    ok = libc.mallopt(m_mmap_threshold, 32 * 2**20) == 1
    return ok and libc.mallopt(m_trim_threshold, 16 * 2**30) == 1
