"""A base model for the tools that need one: exact weight shapes, base weights (DoRA), validation."""

from __future__ import annotations

import torch

from sd_lora.errors import SdLoraError
from sd_lora.formats.detect import FAMILY_NAMES
from sd_lora.formats.names import FAMILY_PREFIXES, model_text_encoder_path

__all__ = ["BaseComponents", "load_base", "components_of", "stored_dtype"]


def components_of(pipe, family: str) -> dict[str, torch.nn.Module]:
    return {c: getattr(pipe, c) for c in FAMILY_PREFIXES[family] if getattr(pipe, c, None) is not None}


class BaseComponents:
    """The UNet and text encoders of a base model, looked up by neutral module paths."""

    def __init__(self, components: dict[str, torch.nn.Module], family: str, prediction_type: str = "epsilon"):
        self.components, self.family, self.prediction_type = components, family, prediction_type
        self._named = {c: dict(m.named_modules()) for c, m in components.items()}

    def module(self, component: str, path: str) -> torch.nn.Module | None:
        model = self.components.get(component)
        if model is None:
            return None
        if component.startswith("text_encoder"):
            path = model_text_encoder_path(path, hasattr(model, "text_model"))
        module = self._named[component].get(path)
        return module.get_base_layer() if module is not None and hasattr(module, "get_base_layer") else module

    def weight(self, component: str, path: str, where: str = "") -> torch.Tensor:
        module = self.module(component, path)
        if module is None or not isinstance(module, (torch.nn.Linear, torch.nn.Conv2d)):
            raise SdLoraError(f"{where or component + '.' + path}: the base model has no Linear/Conv2d there.")
        return module.weight

    def shapes(self, weights) -> dict[tuple[str, str], tuple[int, ...]]:
        out = {}
        for component, modules in weights.items():
            for path in modules:
                module = self.module(component, path)
                if module is not None and hasattr(module, "weight"):
                    out[(component, path)] = tuple(module.weight.shape)
        return out


def stored_dtype(model) -> torch.dtype:
    """The float dtype a local checkpoint's UNet is stored in (fp32 for hub ids and anything unreadable)."""
    from pathlib import Path

    from sd_lora.tools.tensorfile import DTYPES, read_header

    path = Path(str(model))
    files = sorted((path / "unet").glob("*.safetensors")) if path.is_dir() else [path]
    for file in files:
        if file.is_file() and file.suffix == ".safetensors":
            try:
                header, _, _ = read_header(file)
            except SdLoraError:
                break
            dtypes = [DTYPES[v["dtype"]] for k, v in header.items() if "diffusion_model" in k or path.is_dir()]
            floats = [d for d in dtypes if d.is_floating_point]
            if floats:
                return max(set(floats), key=floats.count)
    return torch.float32


def load_base(model, family: str | None = None, allow_pickle: bool = False,
              torch_dtype: torch.dtype = torch.float32) -> BaseComponents:
    """`model`: a path / hub id / `builtin:` name, or an already loaded pipeline."""
    from sd_lora.formats.detect import pipeline_family

    if isinstance(model, BaseComponents):
        return model
    if isinstance(model, (str, bytes)) or hasattr(model, "__fspath__"):
        from sd_lora.models.load import load_pipeline

        pipe, info = load_pipeline(str(model), allow_pickle=allow_pickle, torch_dtype=torch_dtype)
        found, prediction = info.family, info.prediction_type
    else:
        pipe = model
        found, prediction = pipeline_family(pipe), pipe.scheduler.config.get("prediction_type", "epsilon")
    if family and found != family:
        raise SdLoraError(f"{model if isinstance(model, str) else 'the base model'} is an {FAMILY_NAMES[found]} model, "
                          f"but the adapters are {FAMILY_NAMES[family]}.")
    return BaseComponents(components_of(pipe, found), found, prediction)
