"""A LoRA from the difference of two checkpoints of one family (kohya's extract_lora_from_models.py).

Modules: the UNet's attention / feed-forward / projection layers (and, with `conv_rank`, the ResNet convs,
time-embedding projections, shortcuts and samplers, as kohya's LoCon extraction), the text encoders'
attention and MLP layers; SD3 / FLUX: every Linear of the transformer blocks (attention, feed-forward,
modulation), per diffusers module (the file fuses q/k/v and FLUX's linear1 exactly, so a fused module holds the
sum of its blocks' ranks). Per module: ΔW = W_tuned - W_base in fp32; modules whose largest |ΔW| is at most
`min_diff` are skipped and counted; the rest are cut to `rank` (3x3 convs: `conv_rank`) by a randomized SVD
(`torch.svd_lowrank`, oversampled by 10, 4 power iterations; exact for deltas of rank <= rank + 10; a full
SVD where the matrix is small) with alpha = rank. `clamp_quantile` clips the factors like kohya's option.
Only the two models (each in the precision it is stored in) and one module's difference are in memory.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sd_lora.errors import SdLoraError
from sd_lora.formats.detect import FAMILY_NAMES
from sd_lora.formats.names import (
    TEXT_ENCODER_TARGETS,
    UNET_ATTENTION_TARGETS,
    UNET_CONV_TARGETS,
    canonical_text_encoder_path,
)
from sd_lora.tools.deltas import kernel_of
from sd_lora.tools.output import WriteReport, check_output_path, parse_precision, write_adapter
from sd_lora.tools.progress import resolve
from sd_lora.tools.svd import randomized_svd, to_lora_params

__all__ = ["TEXT_ENCODER_MODES", "ExtractReport", "target_modules", "extract_weights", "extract_adapter"]

TEXT_ENCODER_MODES = ("auto", "on", "off")
_DENOISERS = ("unet", "transformer")
_TRANSFORMER_TARGETS = (r"(single_)?transformer_blocks\.\d+\..+",)
_NITER = 4


@dataclass
class ExtractReport:
    extracted: dict[str, int]
    skipped: dict[str, int]
    text_encoder: bool
    seconds: float
    written: WriteReport | None = None
    max_diff: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        parts = ", ".join(f"{c} {self.extracted.get(c, 0)} extracted / {n} skipped" for c, n in self.skipped.items())
        te = "" if self.text_encoder else " (text encoder not included)"
        return f"extracted {parts} in {self.seconds:.0f} s{te}\n{self.written.summary() if self.written else ''}"


def target_modules(model: torch.nn.Module, component: str, conv: bool) -> list[tuple[str, torch.nn.Module]]:
    """(path, layer) of the Linear / Conv2d layers extraction covers, in model order."""
    if component == "transformer":  # SD3 / FLUX: every Linear of the blocks, as kohya's flux_extract_lora.py
        patterns = _TRANSFORMER_TARGETS
    elif component != "unet":
        patterns = TEXT_ENCODER_TARGETS
    else:
        patterns = UNET_ATTENTION_TARGETS + (UNET_CONV_TARGETS if conv else ())
    rx = re.compile(r"(^|\.)(" + "|".join(patterns) + r")$")
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) and rx.search(n)]


def _pairs(base, tuned, component: str, conv: bool):
    tuned_named = dict(tuned.components[component].named_modules())
    for path, layer in target_modules(base.components[component], component, conv):
        other = tuned_named.get(path)
        if other is None or tuple(other.weight.shape) != tuple(layer.weight.shape):
            raise SdLoraError(f"{component}.{path}: the tuned model's layer is missing or has another shape "
                              f"({list(layer.weight.shape)} in the base); the models are different architectures.")
        yield path, layer.weight, other.weight


def extract_weights(base, tuned, *, rank: int, conv_rank: int | None = None, text_encoder: str = "auto",
                    min_diff: float = 0.01, clamp_quantile: float | None = None, progress=None,
                    dtype: torch.dtype = torch.float32):
    """(neutral weights, extracted counts, skipped counts, largest |ΔW| per component) from two BaseComponents."""
    if rank is None or rank < 1 or (conv_rank is not None and conv_rank < 1):
        raise SdLoraError("--rank (and --conv-rank) must be positive integers.")
    if text_encoder not in TEXT_ENCODER_MODES:
        raise SdLoraError(f"--text-encoder must be one of {TEXT_ENCODER_MODES}, not {text_encoder!r}")
    if clamp_quantile is not None and not 0 < clamp_quantile <= 1:
        raise SdLoraError(f"--clamp-quantile {clamp_quantile} must be in (0, 1].")
    if min_diff < 0:
        raise SdLoraError("--min-diff must be >= 0.")
    components = [c for c in base.components if c in _DENOISERS or text_encoder != "off"]
    jobs = [(c, p) for c in components for p in _pairs(base, tuned, c, conv_rank is not None)]
    weights, extracted, skipped, largest = {}, {c: 0 for c in components}, {c: 0 for c in components}, {}
    for i, (component, (path, w_base, w_tuned)) in enumerate(jobs):
        with torch.no_grad():
            diff = w_tuned.detach().to(torch.float32).flatten(1) - w_base.detach().to(torch.float32).flatten(1)
            biggest = float(diff.abs().max()) if diff.numel() else 0.0
            largest[component] = max(largest.get(component, 0.0), biggest)
            forced = component not in _DENOISERS and text_encoder == "on"
            if biggest == 0.0 or (biggest <= min_diff and not forced):
                skipped[component] += 1
            else:
                shape = tuple(w_base.shape)
                k = conv_rank if kernel_of(shape) > 1 and conv_rank is not None else rank
                k = min(k, *diff.shape)
                u, s, vh = randomized_svd(diff, k, niter=_NITER)
                key = path if component in _DENOISERS else canonical_text_encoder_path(path)
                params = to_lora_params(u, s, vh, k, shape, clamp_quantile=clamp_quantile)
                weights.setdefault(component, {})[key] = {n: t.to(dtype) for n, t in params.items()}
                extracted[component] += 1
            del diff
        if progress:
            progress(i + 1, len(jobs), f"{component}.{path}")
    extracted = {c: n for c, n in extracted.items() if n or c in _DENOISERS}
    return weights, extracted, skipped, largest


def extract_adapter(base, tuned, output, *, rank: int, conv_rank: int | None = None, text_encoder: str = "auto",
                    min_diff: float = 0.01, clamp_quantile: float | None = None, family: str | None = None,
                    save_precision="fp16", allow_pickle: bool = False, progress=None) -> ExtractReport:
    """Extract `tuned` - `base` (paths, hub ids or pipelines) as a LoRA file at `output`.

    `progress`: None (quiet), True (print every few seconds) or a callable(done, total, module name).
    """
    from sd_lora.tools.basemodel import load_base, stored_dtype

    start = time.monotonic()
    paths = [m for m in (base, tuned) if isinstance(m, (str, Path))]
    check_output_path(output, [p for p in paths if Path(p).exists()])
    progress = resolve(progress, "extract")
    if rank is None or rank < 1:
        raise SdLoraError("--rank must be a positive integer.")
    # each model loads in the precision it is stored in (differences are taken in fp32, module by module)
    base_c = load_base(base, family, allow_pickle, stored_dtype(base) if isinstance(base, (str, Path)) else None)
    tuned_c = load_base(tuned, None, allow_pickle, stored_dtype(tuned) if isinstance(tuned, (str, Path)) else None)
    if tuned_c.family != base_c.family:
        raise SdLoraError(f"the base is an {FAMILY_NAMES[base_c.family]} model and the tuned one an "
                          f"{FAMILY_NAMES[tuned_c.family]} model; extraction needs two models of one family.")
    weights, extracted, skipped, largest = extract_weights(
        base_c, tuned_c, rank=rank, conv_rank=conv_rank, text_encoder=text_encoder, min_diff=min_diff,
        clamp_quantile=clamp_quantile, progress=progress, dtype=parse_precision(save_precision))
    if not weights:
        raise SdLoraError(f"the two models do not differ by more than --min-diff {min_diff} in any module; "
                          "nothing to extract.")
    name = lambda m: Path(m).name if isinstance(m, (str, Path)) else type(m).__name__  # noqa: E731
    tool = {"tool": "extract", "base": name(base), "tuned": name(tuned), "rank": rank, "conv_rank": conv_rank,
            "text_encoder": text_encoder, "min_diff": min_diff, "clamp_quantile": clamp_quantile,
            "skipped": skipped, "svd": f"torch.svd_lowrank(q=rank+10, niter={_NITER})"}
    info = {"prediction_type": base_c.prediction_type,
            **({"base_model_name": str(base)} if isinstance(base, (str, Path)) else {})}
    from sd_lora.formats.metadata import community_metadata

    inherited = {k: v for k, v in community_metadata({"family": base_c.family, **info}).items()
                 if k.startswith("ss_sd_model")}
    denoiser = base_c.components.get("unet") or base_c.components["transformer"]
    written = write_adapter(output, weights, base_c.family, dict(denoiser.config),
                            save_precision=save_precision, info=info, tool=tool, inherited=inherited,
                            comment=f"extracted from {name(tuned)} - {name(base)} at rank {rank}",
                            components=base_c.components)
    te = any(c not in _DENOISERS for c in weights)
    return ExtractReport(extracted, skipped, te, time.monotonic() - start, written, largest)
