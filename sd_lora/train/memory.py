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

import torch

_WEIGHT_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
__all__ = ["release_encoders", "restore_encoders", "encoders_for_sampling", "trim_heap", "tune_cpu_allocator"]


def release_encoders(recipe, latents_cached: bool, texts_cached: bool) -> list[str]:
    """Free (CPU) or offload (GPU) the VAE / text encoders nothing needs any more; returns what was released.
    The validation set is encoded at every validation, so it keeps both; samples keep them on the CPU and
    let a GPU run offload them between samples."""
    from sd_lora.data import has_validation

    cfg, device = recipe.cfg, recipe.accelerator.device
    offload = device.type != "cpu"
    free = not has_validation(cfg.data) and (offload or not cfg.sample.every_n_steps)
    names = []
    if latents_cached and free:
        names.append("vae")
    if texts_cached and free and not cfg.network.train_text_encoder:
        names += [f"text_encoder{'' if i == 0 else '_2'}" for i in range(len(recipe.text_encoders))]
    if not names:
        return []
    modules = [recipe.vae] * ("vae" in names) + [te for i, te in enumerate(recipe.text_encoders)
                                                  if f"text_encoder{'' if i == 0 else '_2'}" in names]
    for module in modules:
        if not getattr(module, "is_quantized", False):
            module.to("cpu" if offload else "meta")
    recipe.released_encoders = (names, "cpu" if offload else "freed")
    gc.collect()
    if offload:
        torch.cuda.empty_cache() if device.type == "cuda" else None
    else:
        trim_heap()
    what = "moved to the CPU (back on the GPU only for samples)" if offload else "freed (outputs are cached)"
    print(f"memory: {', '.join(n.replace('_', ' ') for n in names)} {what}")
    return names


def _released_modules(recipe) -> list[torch.nn.Module]:
    names, _ = getattr(recipe, "released_encoders", ([], None))
    out = [recipe.vae] if "vae" in names else []
    return out + [te for i, te in enumerate(recipe.text_encoders) if f"text_encoder{'' if i == 0 else '_2'}" in names]


@contextlib.contextmanager
def encoders_for_sampling(recipe):
    """Offloaded encoders back on the training device for a sample, then off it again (no-op otherwise)."""
    names, how = getattr(recipe, "released_encoders", ([], None))
    if how == "freed":
        restore_encoders(recipe)
        names, how = [], None
    modules = _released_modules(recipe) if how == "cpu" else []
    for module in modules:
        module.to(recipe.accelerator.device)
    try:
        yield
    finally:
        for module in modules:
            module.to("cpu")
        if modules and recipe.accelerator.device.type == "cuda":
            torch.cuda.empty_cache()


def restore_encoders(recipe) -> None:
    """Reload freed encoder weights from the base model (as loaded for training: same dtype and device)."""
    from sd_lora.models.load import load_pipeline

    names, how = getattr(recipe, "released_encoders", ([], None))
    if how != "freed":
        return
    m = recipe.cfg.model
    fresh, _ = load_pipeline(m.pretrained, family=m.family, prediction_type=m.prediction_type,
                             allow_pickle=m.allow_pickle, quantize=None, revision=m.revision)
    device = recipe.accelerator.device
    for name, module in zip(names, _released_modules(recipe)):
        source = getattr(fresh, name)
        dtype = torch.float32 if name == "vae" else _WEIGHT_DTYPES[recipe.cfg.train.mixed_precision]
        module.load_state_dict({k: v.to(device, dtype) for k, v in source.state_dict().items()}, assign=True)
        saved = set(source.state_dict())
        for key, buffer in source.named_buffers():  # non-persistent buffers (CLIP's position_ids) too
            if key not in saved:
                owner, _, leaf = key.rpartition(".")
                module.get_submodule(owner)._buffers[leaf] = buffer.to(device)
        module.requires_grad_(False)
    recipe.released_encoders = ([], None)


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
