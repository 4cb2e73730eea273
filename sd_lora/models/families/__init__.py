"""The model-family layer: one module per family (sd1, sd2, sdxl, sd3), each a `Family` subclass.

Everything outside this folder asks a family object what differs (components, conditioning, the denoiser call,
the training objective, targets, blocks, refused settings) and never compares family names.

- `get_family(name) -> Family`
- `detect_family(model_index, denoiser_config) -> str` (the most specific family that recognises the model)
- `family_of_pipeline(pipe) -> Family`
- `FAMILY_NAMES`: name -> title, `DENOISER_FOLDERS`: the component folders a denoiser can live in
"""

from __future__ import annotations

from sd_lora.errors import SdLoraError
from sd_lora.models.families.base import Family, ModelParts
from sd_lora.models.families.sd1 import SD1
from sd_lora.models.families.sd2 import SD2
from sd_lora.models.families.sd3 import SD3
from sd_lora.models.families.sdxl import SDXL

__all__ = ["Family", "ModelParts", "FAMILIES", "FAMILY_NAMES", "DENOISER_FOLDERS", "get_family", "detect_family",
           "family_of_pipeline", "settings_problems", "DEFAULT_FAMILY"]

# most specific first: detection takes the first family that recognises a model
_ORDER: tuple[type[Family], ...] = (SD3, SDXL, SD2, SD1)
FAMILIES: dict[str, Family] = {cls.name: cls() for cls in _ORDER}
FAMILY_NAMES = {name: f.title for name, f in FAMILIES.items()}
DEFAULT_FAMILY = SD1.name  # assumed for a hub id not yet downloaded, and the tiny models' default
DENOISER_FOLDERS = tuple(dict.fromkeys(f.denoiser for f in FAMILIES.values()))


def get_family(name: str) -> Family:
    try:
        return FAMILIES[name]
    except KeyError:
        raise SdLoraError(f"unknown model family {name!r}; expected one of: {', '.join(FAMILIES)}") from None


def detect_family(model_index: dict, denoiser_config: dict) -> str:
    for family in FAMILIES.values():
        if family.matches(model_index, denoiser_config):
            return family.name
    raise SdLoraError(f"not a model sd-lora can train ({model_index.get('_class_name', 'unknown pipeline')}); "
                      f"supported: {', '.join(FAMILY_NAMES.values())}")


def settings_problems(family: Family, cfg) -> list[str]:
    """What in `cfg` the model's family cannot use: another family's own settings, then the family's own checks."""
    problems = []
    for other in FAMILIES.values():
        if other is family:
            continue
        for section, key, default in other.own_settings:
            value = getattr(getattr(cfg, section), key)
            if value != default:
                problems.append(f"{section}.{key} = {value!r} is only read for {other.title} models, and this is a "
                                f"{family.title} model ({family.name}); leave it out")
    return problems + family.check_training(cfg)


def family_of_pipeline(pipe) -> Family:
    """The family of a loaded diffusers pipeline, from its class and denoiser config."""
    index = {"_class_name": type(pipe).__name__, **{name: [None, None] for name in pipe.components}}
    denoiser = next((getattr(pipe, n) for n in DENOISER_FOLDERS if getattr(pipe, n, None) is not None), None)
    config = dict(getattr(denoiser, "config", {}) or {})
    config.setdefault("_class_name", type(denoiser).__name__)
    return get_family(detect_family(index, config))
