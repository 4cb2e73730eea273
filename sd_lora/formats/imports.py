"""Read any supported adapter file and apply it to a pipeline: all or nothing.

Formats: community LoRA / LoCon / LoHa (incl. Tucker) / LoKr / DoRA, diffusers' format, peft adapter
directories. Everything is validated against the pipeline's models first (names, layer types, shapes,
NaN) and reported as one SdLoraError; only then is the adapter injected, with peft directly (diffusers'
`set_adapters` / `fuse_lora` work on the result). If injection fails midway the adapter is removed again,
so the pipeline is left unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from sd_lora.errors import SdLoraError
from sd_lora.formats.community import AdapterWeights, adapter_type, from_community
from sd_lora.formats.detect import FAMILY_NAMES, detect_format, guess_family, pipeline_family
from sd_lora.formats.diffusers_format import from_diffusers
from sd_lora.formats.names import FAMILY_PREFIXES
from sd_lora.formats.transformer_files import is_transformer_family
from sd_lora.formats.peft_bridge import adapted_modules, inject, remove_adapter
from sd_lora.formats.peft_dir import is_peft_dir, read_peft_dir
from sd_lora.formats.safetensors_io import read_tensor_file
from sd_lora.formats.validate import find_non_finite, find_non_finite_keys, find_rank_mismatches, resolve_modules
from sd_lora.models.families import FILE_FAMILIES

__all__ = ["AdapterFile", "ApplyReport", "load_adapter_file", "plan_modules", "apply_adapter_file",
           "denoiser_config"]

_MAX_LISTED = 8


@dataclass
class AdapterFile:
    """A read adapter file: raw tensors and metadata, plus what they look like."""

    path: Path
    format: str  # community | diffusers | peft-dir
    adapter_type: str  # lora | locon | dora | loha | lokr
    family: str | None  # guessed from the keys / shapes / metadata
    family_reason: str
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str] = field(default_factory=dict)
    peft_weights: AdapterWeights | None = None  # peft directories are read straight into the neutral layout

    def weights(self, family: str, unet_config) -> tuple[AdapterWeights, list[str]]:
        """Neutral layout for `family`, and the keys that do not map to it."""
        if self.peft_weights is not None:
            return self.peft_weights, []
        if self.format == "community":
            return from_community(self.tensors, family, unet_config)
        return from_diffusers(self.tensors, self.metadata)


@dataclass
class ApplyReport:
    adapter_name: str
    family: str
    format: str
    adapter_type: str
    modules: dict[str, int]  # component -> layers adapted

    def summary(self) -> str:
        parts = ", ".join(f"{c} {n}" for c, n in self.modules.items())
        return f"{self.adapter_name}: {self.adapter_type} ({self.format}) on {self.family}: {parts} modules"


def _damaged(path: Path, what: str, problems: list[str], cause: str) -> SdLoraError:
    listed = "\n  ".join(problems[:_MAX_LISTED])
    more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
    return SdLoraError(f"{path}: {len(problems)} {what}:\n  {listed}{more}\nThe file is damaged ({cause}); "
                       "re-export it from a good checkpoint or use another file.")


def _check_tensors(path: Path, tensors: dict[str, torch.Tensor], weights: AdapterWeights) -> None:
    """Files whose numbers cannot be used are refused on reading, for inspect and convert as for loading."""
    mismatched = find_rank_mismatches(weights)
    if mismatched:
        raise _damaged(path, "module(s) with low-rank factors that do not fit together", mismatched,
                       "cut short or edited by hand")
    bad = find_non_finite_keys(tensors)
    if bad:
        raise _damaged(path, "tensor(s) hold NaN or inf values", [_readable(k) for k in bad],
                       "e.g. saved from a run that diverged")


def _readable(key: str) -> str:
    """`lora_unet_x_attn2_to_v.lora_up.weight` -> the key plus its module path (`... attn2.to_v`)."""
    from sd_lora.formats.names import dotted

    for prefix in sorted(("lora_unet_", "lora_te_", "lora_te1_", "lora_te2_"), key=len, reverse=True):
        if key.startswith(prefix):
            return f"{key} (module {dotted(key[len(prefix):].partition('.')[0])})"
    return key


def load_adapter_file(path: str | Path, allow_pickle: bool = False) -> AdapterFile:
    """Read an adapter file (or peft directory) without applying it. A file with NaN/inf values or low-rank
    factors of different ranks is an SdLoraError naming them."""
    path = Path(path)
    if is_peft_dir(path):
        weights, metadata = read_peft_dir(path)
        found = [(f.name, why) for f in FILE_FAMILIES.values() for why in [f.recognise_components(weights)] if why]
        family, why = found[0] if found else (None, "peft directories do not say")
        _check_tensors(path, {f"{c}.{m}.{k}": t for c, ms in weights.items() for m, ps in ms.items()
                              for k, t in ps.items()}, weights)
        return AdapterFile(path, "peft-dir", adapter_type(weights), family,
                           why, {}, metadata,
                           peft_weights=weights)
    tensors, metadata = read_tensor_file(path, allow_pickle=allow_pickle)
    if not tensors:
        raise SdLoraError(f"{path}: the file holds no tensors.")
    fmt = detect_format(tensors)
    if fmt == "unknown":
        foreign = [k for k in tensors if not k.startswith(("lora_unet_", "lora_te", "unet.", "transformer.",
                                                           "text_encoder"))]
        raise SdLoraError(f"{path}: not a LoRA file sd-lora knows: keys such as {foreign[:3] or list(tensors)[:3]} "
                          "are neither community (lora_unet_/lora_te*_, or an SD3/FLUX layout ComfyUI reads) nor "
                          "diffusers (unet./transformer./text_encoder.) keys.")
    family, reason = guess_family(tensors, metadata)
    kind_weights = from_diffusers(tensors, metadata)[0] if fmt == "diffusers" else _kinds_only(tensors)
    _check_tensors(path, tensors, kind_weights)
    return AdapterFile(path, fmt, adapter_type(kind_weights), family, reason, tensors, metadata)


def _kinds_only(tensors: dict[str, torch.Tensor]) -> AdapterWeights:
    from sd_lora.formats.community import split_community_key

    modules: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        split = split_community_key(key)
        if split:
            modules.setdefault(split[0], {})[split[1]] = tensor
    return {"all": modules}


def _fail(adapter: AdapterFile, family: str, problems: list[str], what: str) -> SdLoraError:
    found = (f"the keys look like {FAMILY_NAMES[adapter.family]} ({adapter.family_reason})"
             if adapter.family else f"the family is unclear ({adapter.family_reason})")
    listed = "\n  ".join(problems[:_MAX_LISTED])
    more = f"\n  ... and {len(problems) - _MAX_LISTED} more" if len(problems) > _MAX_LISTED else ""
    todo = (f"use it with a {FAMILY_NAMES[adapter.family]} model, or a LoRA made for {FAMILY_NAMES[family]}. "
            if adapter.family and adapter.family != family else "")
    return SdLoraError(f"{adapter.path}: cannot apply this {adapter.format} {adapter.adapter_type} file to the "
                       f"{FAMILY_NAMES[family]} pipeline; {found}. {len(problems)} {what}:\n  {listed}{more}\n"
                       f"{todo}Nothing was changed.")


def _with_file_names(adapter: AdapterFile, weights: AdapterWeights, problems: list[str], family: str,
                     unet_config) -> list[str]:
    """Prefix each problem with the module's name as the file spells it, so users can find the key."""
    if adapter.format != "community" or is_transformer_family(family):
        return problems
    from sd_lora.formats.community import split_community_key
    from sd_lora.formats.names import community_to_module

    names = {}  # "component.path:" -> the module name as the file spells it
    for key in adapter.tensors:
        split = split_community_key(key)
        try:
            component, path = community_to_module(split[0], family, unet_config) if split else (None, None)
        except KeyError:
            continue
        if component is not None:
            names.setdefault(f"{component}.{path}:", split[0])
    out = []
    for problem in problems:
        head = problem.split(" ", 1)[0]
        out.append(f"{names[head]} ({problem})" if head in names else problem)
    return out


def plan_modules(adapter: AdapterFile, components: dict[str, torch.nn.Module], family: str,
                 unet_config) -> dict[str, dict[str, dict[str, torch.Tensor]]]:
    """Validated weights keyed by model module paths, or one SdLoraError listing every problem."""
    weights, problems = adapter.weights(family, unet_config)
    resolved, shape_problems = resolve_modules(weights, components)
    problems += _with_file_names(adapter, weights, shape_problems, family, unet_config)
    if problems:
        raise _fail(adapter, family, problems, "problem(s)")
    bad = find_non_finite(weights)
    if bad:
        raise _fail(adapter, family, [f"{m}: holds NaN or inf values" for m in bad], "module(s) hold NaN/inf")
    return resolved


def denoiser_config(pipe):
    """Config of the pipeline's denoiser: the UNet, or the transformer of SD3 / FLUX."""
    denoiser = getattr(pipe, "unet", None)
    return (denoiser if denoiser is not None else pipe.transformer).config


def _components(pipe, family: str) -> dict[str, torch.nn.Module]:
    return {c: getattr(pipe, c) for c in FAMILY_PREFIXES[family] if getattr(pipe, c, None) is not None}


def _apply(adapter: AdapterFile, plan, components, adapter_name: str) -> None:
    # Straight through peft, never the transformers/diffusers integration layers: their version gates refuse
    # some peft/transformers pairs (transformers 5.24 wants peft >= 0.22), and diffusers' loader misreads SD1
    # alphas that vary per module. peft's own config (rank/alpha patterns) recreates every module exactly.
    for component, modules in plan.items():
        inject(components[component], modules, adapter_name)


def apply_adapter_file(pipe, path: str | Path, adapter_name: str, *, family: str | None = None,
                       allow_pickle: bool = False) -> ApplyReport:
    """Inject the adapter in `path` into `pipe` as `adapter_name`; all modules or none.

    Afterwards diffusers' `set_adapters`, `fuse_lora` / `unfuse_lora` and peft's mixed-adapter batches work.
    """
    adapter = load_adapter_file(path, allow_pickle=allow_pickle)
    family = family or pipeline_family(pipe)
    components = _components(pipe, family)
    taken = [c for c, m in components.items() if adapter_name in (getattr(m, "peft_config", None) or {})]
    if taken:
        raise SdLoraError(f"adapter name {adapter_name!r} is already used in {taken}; pick another name.")
    plan = plan_modules(adapter, components, family, denoiser_config(pipe))
    try:
        _apply(adapter, plan, components, adapter_name)
        applied = {c: len(adapted_modules(components[c], adapter_name)) for c in plan}
        missing = {c: (applied[c], len(plan[c])) for c in plan if applied[c] != len(plan[c])}
        if missing:
            raise SdLoraError(f"{adapter.path}: only part of the adapter was applied (applied/expected per "
                              f"component: {missing}); it was removed again.")
    except BaseException as e:
        for model in components.values():
            remove_adapter(model, adapter_name)
        if isinstance(e, (SdLoraError, KeyboardInterrupt)):
            raise
        raise SdLoraError(f"{adapter.path}: applying the adapter failed ({type(e).__name__}: {e}); "
                          "it was removed again.") from e
    return ApplyReport(adapter_name, family, adapter.format, adapter.adapter_type, applied)
