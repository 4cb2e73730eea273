"""What the tools read: an adapter file in the neutral layout, and each module's weight delta ΔW.

`read_adapter` accepts every file sd-lora reads (community LoRA / LoCon / LoHa / LoKr / DoRA, diffusers
files, peft folders) and settles the model family and the UNet layout used for names. `module_delta`
gives ΔW of one module in fp32 as the community loaders compute it at multiplier 1; `lora_factors` gives
a LoRA module as two factors (up·scale, down) whose product is ΔW, which is what makes the SVDs of merge
and resize cheap. DoRA's effective delta needs the base weight (`base_weight`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from sd_lora.errors import SdLoraError
from sd_lora.formats.community import AdapterWeights
from sd_lora.formats.detect import FAMILY_NAMES
from sd_lora.formats.lycoris import delta_weight
from sd_lora.models.families import FAMILY_CHOICES, file_family

__all__ = ["AdapterInput", "read_adapter", "module_shape", "module_delta", "lora_factors", "is_lora_module",
           "kernel_of", "prediction_of", "apply_delta", "FAMILIES"]

FAMILIES = FAMILY_CHOICES
_CONV3 = re.compile(r"(resnets\.\d+\.conv[12]|(down|up)samplers\.0\.conv|^conv_in|^conv_out)$")


@dataclass
class AdapterInput:
    """One adapter file read for a tool: neutral weights plus what is needed to write names back."""

    path: Path
    family: str
    unet_config: dict  # the UNet layout community names were mapped with
    adapter_type: str  # lora | locon | dora | loha | lokr
    format: str
    weights: AdapterWeights
    metadata: dict[str, str] = field(default_factory=dict)

    def modules(self):
        """(component, path, params) of every module."""
        for component, modules in self.weights.items():
            for path, params in modules.items():
                yield component, path, params

    @property
    def num_modules(self) -> int:
        return sum(len(m) for m in self.weights.values())


def read_adapter(path, family: str | None = None, unet_config=None, allow_pickle: bool = False) -> AdapterInput:
    """Read an adapter file for the tools; the family is `family`, else what the file says, else an error."""
    from sd_lora.formats.convert import layout_config

    path = Path(path)
    if not path.exists():
        raise SdLoraError(f"{path}: no such file.")
    adapter = _load(path, allow_pickle)
    if family is not None and family not in FAMILIES:
        raise SdLoraError(f"unknown family {family!r}; expected one of {FAMILIES}")
    if family and adapter.family and family != adapter.family:
        raise SdLoraError(f"{path}: this is an {FAMILY_NAMES[adapter.family]} adapter ({adapter.family_reason}), "
                          f"not {FAMILY_NAMES[family]}.")
    family = family or adapter.family
    if family is None:
        raise SdLoraError(f"{path}: cannot tell the model family ({adapter.family_reason}); "
                          f"pass --family {'|'.join(FAMILIES)}.")
    layout = layout_config(family, adapter.metadata, unet_config, names=list(adapter.tensors))
    weights, problems = adapter.weights(family, layout)
    if problems:
        raise SdLoraError(f"{path}: {len(problems)} key(s) do not map to {FAMILY_NAMES[family]} modules: "
                          + "; ".join(problems[:5]))
    if not any(weights.values()):
        raise SdLoraError(f"{path}: the file holds no adapter modules.")
    return AdapterInput(path, family, layout, adapter.adapter_type, adapter.format, weights, dict(adapter.metadata))


def prediction_of(metadata: dict) -> str:
    """'v_prediction' when an adapter's metadata says its base is a v-prediction model, else 'epsilon'."""
    v = metadata.get("modelspec.prediction_type") == "v" or metadata.get("ss_base_model_version", "").endswith("_v")
    return "v_prediction" if v else "epsilon"


def _load(path: Path, allow_pickle: bool):
    """`formats.load_adapter_file`, but .safetensors files are read tensor by tensor (half the peak memory)."""
    from sd_lora.formats.community import adapter_type
    from sd_lora.formats.detect import detect_format, guess_family
    from sd_lora.formats.diffusers_format import from_diffusers
    from sd_lora.formats.imports import AdapterFile, _kinds_only, load_adapter_file
    from sd_lora.tools.tensorfile import read_tensors

    if not (path.is_file() and path.suffix.lower() == ".safetensors"):
        return load_adapter_file(path, allow_pickle=allow_pickle)
    tensors, metadata = read_tensors(path)
    fmt = detect_format(tensors)
    if not tensors or fmt == "unknown":
        return load_adapter_file(path)  # its error says what the file is instead
    family, reason = guess_family(tensors, metadata)
    kinds = from_diffusers(tensors, metadata)[0] if fmt == "diffusers" else _kinds_only(tensors)
    return AdapterFile(path, fmt, adapter_type(kinds), family, reason, tensors, metadata)


def is_lora_module(params: dict) -> bool:
    return "lora_A" in params and "dora_scale" not in params


def kernel_of(shape: tuple[int, ...]) -> int:
    """Spatial size (kh·kw) of a weight shape; 1 for Linear and 1x1 convs."""
    return shape[2] * shape[3] if len(shape) == 4 else 1


def _guessed_shape(component: str, path: str, family: str, out: int, flat_in: int) -> tuple[int, ...]:
    # LoHa / LoKr keep a conv's input flattened; the layer kind follows from the module name
    if component == "unet" and _CONV3.search(path) and flat_in % 9 == 0:
        return (out, flat_in // 9, 3, 3)
    if file_family(family).pointwise_conv(component, path):
        return (out, flat_in, 1, 1)
    return (out, flat_in)


def module_shape(component: str, path: str, params: dict, family: str,
                 shapes: dict[tuple[str, str], tuple[int, ...]] | None = None) -> tuple[int, ...]:
    """Shape of the base weight the module adapts: from `shapes` (a model's), else from the tensors."""
    if shapes and (component, path) in shapes:
        return tuple(shapes[(component, path)])
    p = params
    if "lora_A" in p:
        return (p["lora_B"].shape[0], *p["lora_A"].shape[1:])
    if "hada_w1_a" in p:
        if "hada_t1" in p:
            return (p["hada_w1_a"].shape[1], p["hada_w1_b"].shape[1], *p["hada_t1"].shape[2:])
        return _guessed_shape(component, path, family, p["hada_w1_a"].shape[0], p["hada_w1_b"].shape[1])
    w1 = p["lokr_w1"].shape if "lokr_w1" in p else (p["lokr_w1_a"].shape[0], p["lokr_w1_b"].shape[1])
    if "lokr_w2" in p:
        w2 = p["lokr_w2"].shape
    elif "lokr_t2" in p:
        w2 = (p["lokr_w2_a"].shape[1], p["lokr_w2_b"].shape[1], *p["lokr_t2"].shape[2:])
    else:
        w2 = (p["lokr_w2_a"].shape[0], p["lokr_w2_b"].shape[1])
    if len(w2) == 4:
        return (w1[0] * w2[0], w1[1] * w2[1], w2[2], w2[3])
    return _guessed_shape(component, path, family, w1[0] * w2[0], w1[1] * w2[1])


def _scale(params: dict) -> float:
    rank = params["lora_A"].shape[0]
    return float(params["alpha"].item()) / rank if "alpha" in params else 1.0


def lora_factors(params: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """(up [out, r] with the alpha/rank scale folded in, down [r, in·k]) in fp32: ΔW = up @ down."""
    up = params["lora_B"].detach().to("cpu", torch.float32).flatten(1)
    down = params["lora_A"].detach().to("cpu", torch.float32).flatten(1)
    return up * _scale(params), down


def module_delta(params: dict, shape: tuple[int, ...], base_weight: torch.Tensor | None = None,
                 where: str = "module") -> torch.Tensor:
    """ΔW of one module, flattened to [out, in·kh·kw], fp32, at multiplier 1.

    DoRA: the effective change m·(W + s·BA)/‖W + s·BA‖ − W of peft's DoRA, which needs `base_weight`.
    """
    if "dora_scale" in params:
        if base_weight is None:
            raise SdLoraError(f"{where}: a DoRA module's delta depends on the base weights; give the base model "
                              "(--model) to merge or resize DoRA files.")
        up, down = lora_factors(params)
        w = base_weight.detach().to("cpu", torch.float32).flatten(1)
        v = w + up @ down
        m = params["dora_scale"].detach().to("cpu", torch.float32).reshape(-1, 1)
        if m.shape[0] != v.shape[0]:
            raise SdLoraError(f"{where}: dora_scale {list(params['dora_scale'].shape)} is not one magnitude per "
                              "output channel (LyCORIS input-axis layout); it cannot be converted exactly.")
        return m * v / torch.linalg.norm(v, dim=1, keepdim=True) - w
    if "lora_A" in params:
        up, down = lora_factors(params)
        return up @ down
    fp32 = {k: v.detach().to("cpu", torch.float32) for k, v in params.items()}
    try:
        return delta_weight(fp32, shape).reshape(shape[0], -1)
    except (RuntimeError, ValueError) as e:
        raise SdLoraError(f"{where}: its tensors do not build a {list(shape)} weight ({e}).") from None


def apply_delta(weight: torch.Tensor, params: dict, multiplier: float, shape: tuple[int, ...],
                where: str = "module") -> torch.Tensor:
    """The weight with the module applied at `multiplier`, as peft computes it unfused, flattened to [out, -1] fp32.

    LoRA / LoHa / LoKr: W + multiplier·ΔW. DoRA: m·(W + multiplier·s·BA) / ‖W + multiplier·s·BA‖ (per output
    row),
    the magnitude applying in full at any multiplier, as peft's DoRA layers do.
    """
    w = weight.detach().to("cpu", torch.float32).reshape(shape[0], -1)
    if "dora_scale" in params:
        up, down = lora_factors(params)
        v = w + multiplier * (up @ down)
        m = params["dora_scale"].detach().to("cpu", torch.float32).reshape(-1, 1)
        return m * v / torch.linalg.norm(v, dim=1, keepdim=True)
    return w + multiplier * module_delta(params, shape, where=where)
