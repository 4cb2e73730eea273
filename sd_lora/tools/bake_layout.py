"""Where an adapted module's weight lives in an original-layout (LDM / SGM) single-file checkpoint.

The inverse direction of loading, per module: UNet paths go through `original_layout.unet_to_original`,
HF-CLIP text encoders keep transformers' names under their prefix, OpenCLIP towers (SD2, SDXL's second
encoder) hold q/k/v as three row blocks of one fused `attn.in_proj_weight`. Pure functions over names and
shapes, so they are checked against the full-size layouts on the meta device.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from sd_lora.errors import SdLoraError
from sd_lora.models.families.unet_original_layout import TEXT_PREFIXES, clip_to_original, unet_to_original

__all__ = ["Target", "original_target", "plan_original"]

_OPEN_CLIP = {"self_attn.out_proj": "attn.out_proj", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj"}
_LAYER = re.compile(r"^(?:text_model\.)?encoder\.layers\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class Target:
    key: str  # tensor name in the checkpoint
    rows: tuple[int, int] | None = None  # a row block of that tensor (fused q/k/v), else the whole tensor


def _text_component_index(component: str) -> int:
    return {"text_encoder": 0, "text_encoder_2": 1}[component]


def original_target(component: str, path: str, family: str, unet_config: dict, width: int | None = None) -> Target:
    """The checkpoint tensor of module `path` (neutral path) of `component`; `width`: OpenCLIP hidden size."""
    if component == "unet":
        return Target(next(iter(unet_to_original({path + ".weight": None}, unet_config))))
    prefix, kind = TEXT_PREFIXES[family][_text_component_index(component)]
    if kind == "clip":
        return Target(next(iter(clip_to_original({path + ".weight": None}, prefix))))
    m = _LAYER.match(path)
    if not m:
        raise SdLoraError(f"{component}.{path}: no OpenCLIP weight corresponds to this module")
    layer, rest = m.groups()
    block = f"{prefix}transformer.resblocks.{layer}."
    if rest in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"):
        if width is None:
            raise SdLoraError(f"{component}.{path}: the OpenCLIP width is needed to find q/k/v rows")
        i = "qkv".index(rest[len("self_attn.")])
        return Target(block + "attn.in_proj_weight", (i * width, (i + 1) * width))
    if rest in _OPEN_CLIP:
        return Target(block + _OPEN_CLIP[rest] + ".weight")
    raise SdLoraError(f"{component}.{path}: no OpenCLIP weight corresponds to this module")


def _openclip_width(shapes: dict, family: str, component: str) -> int | None:
    prefix, kind = TEXT_PREFIXES[family][_text_component_index(component)]
    shape = shapes.get(prefix + "token_embedding.weight")
    return int(shape[1]) if kind == "open_clip" and shape is not None else None


def _flat(shape: tuple[int, ...]) -> tuple[int, int]:
    return shape[0], math.prod(shape[1:])


def plan_original(modules, shapes: dict[str, tuple[int, ...]], family: str, unet_config: dict,
                  module_shapes: dict[tuple[str, str], tuple[int, ...]]) -> dict[tuple[str, str], Target]:
    """{(component, path): Target} for every module, checked against the checkpoint's tensor shapes.

    `modules`: (component, path) pairs; `shapes`: checkpoint key -> shape; `module_shapes`: the weight shape
    each module's delta has. Raises one SdLoraError listing every module that has no matching tensor.
    """
    out, problems = {}, []
    for component, path in modules:
        want = tuple(module_shapes[(component, path)])
        try:
            target = original_target(component, path, family, unet_config,
                                     _openclip_width(shapes, family, component) if component != "unet" else None)
        except (SdLoraError, ValueError, KeyError) as e:
            problems.append(f"{component}.{path}: {e}")
            continue
        have = shapes.get(target.key)
        if have is None:
            problems.append(f"{component}.{path}: the checkpoint has no {target.key}")
            continue
        if target.rows:
            have = (target.rows[1] - target.rows[0], *have[1:])
        if _flat(tuple(have)) != _flat(want) or (len(want) == 4 and len(have) == 4 and tuple(have) != want):
            problems.append(f"{component}.{path}: the adapter builds {list(want)}, the checkpoint's {target.key} "
                            f"is {list(have)}")
            continue
        out[(component, path)] = target
    if problems:
        shown = "\n  ".join(problems[:8]) + (f"\n  ... and {len(problems) - 8} more" if len(problems) > 8 else "")
        raise SdLoraError(f"{len(problems)} adapter module(s) do not fit the checkpoint:\n  {shown}\n"
                          "Nothing was written.")
    return out
