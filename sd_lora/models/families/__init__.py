"""The model-family layer: one module per family (sd1, sd2, sdxl, sd3, flux), each a `Family` subclass.

UNet-family internals live here too (`unet_*.py`: single files, the original layout, full-size architectures, tiny
models, file recognisers), as do the transformer families' key naming (`sd3_keys`, `flux_keys`) and file
recognisers (`transformer_detect`).

Everything outside this folder asks a family object what differs (components, conditioning, the denoiser call,
the training objective, targets, blocks, refused settings) and never compares family names.

- `get_family(name) -> Family`
- `detect_family(model_index, denoiser_config) -> str` (the most specific family that recognises the model)
- `family_of_pipeline(pipe) -> Family`
- `FAMILY_NAMES`: name -> title, `DENOISER_FOLDERS`: the component folders a denoiser can live in
- `FILE_FAMILIES`, `file_family(name)`: every family whose LoRA files sd-lora reads and writes (FLUX.1's through
  `FluxFiles` until its family module registers it), `file_recognisers()`: their file recognisers in rank order
"""

from __future__ import annotations

from sd_lora.errors import SdLoraError
from sd_lora.models.families.base import Family, ModelParts
from sd_lora.models.families.flux import Flux
from sd_lora.models.families.flux_files import FluxFiles
from sd_lora.models.families.sd1 import SD1
from sd_lora.models.families.sd2 import SD2
from sd_lora.models.families.sd3 import SD3
from sd_lora.models.families.sdxl import SDXL

__all__ = ["Family", "ModelParts", "FAMILIES", "FAMILY_NAMES", "DENOISER_FOLDERS", "get_family", "detect_family",
           "family_of_pipeline", "settings_problems", "DEFAULT_FAMILY", "FILE_FAMILIES", "file_family",
           "file_recognisers", "file_family_of_pipeline", "FAMILY_CHOICES"]

# most specific first: detection takes the first family that recognises a model
_ORDER: tuple[type[Family], ...] = (Flux, SD3, SDXL, SD2, SD1)
FAMILIES: dict[str, Family] = {cls.name: cls() for cls in _ORDER}
FAMILY_NAMES = {name: f.title for name, f in FAMILIES.items()}
# files: the trainable families, and those whose files only are handled so far (most specific first)
FILE_FAMILIES: dict[str, Family] = {cls.name: FAMILIES.get(cls.name) or cls() for cls in (FluxFiles,) + _ORDER}
FAMILY_CHOICES = tuple(reversed(FILE_FAMILIES))  # oldest first, for --family and messages
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
    own = {(section, key) for section, key, _ in family.own_settings}
    readers: dict[tuple[str, str, object], list[str]] = {}  # a setting -> the other families that read it
    for other in reversed(FAMILIES.values()):  # oldest family first: a shared setting names them in that order
        for section, key, default in other.own_settings:
            if other is not family and (section, key) not in own:
                readers.setdefault((section, key, default), []).append(other.title)
    problems = []
    for (section, key, default), titles in readers.items():
        value = getattr(getattr(cfg, section), key)
        if value != default:
            problems.append(f"{section}.{key} = {value!r} is only read for {' models and '.join(titles)} models, and "
                            f"this is a {family.title} model ({family.name}); leave it out")
    return problems + family.check_training(cfg)


def _pipeline_index(pipe) -> tuple[dict, dict]:
    names = pipe.components if hasattr(pipe, "components") else vars(pipe)  # a pipeline, or its parts in a namespace
    index = {"_class_name": type(pipe).__name__, **{name: [None, None] for name in names}}
    folders = dict.fromkeys(f.denoiser for f in FILE_FAMILIES.values())
    denoiser = next((getattr(pipe, n) for n in folders if getattr(pipe, n, None) is not None), None)
    config = dict(getattr(denoiser, "config", {}) or {})
    config.setdefault("_class_name", type(denoiser).__name__)
    return index, config


def family_of_pipeline(pipe) -> Family:
    """The family of a loaded diffusers pipeline, from its class and denoiser config."""
    return get_family(detect_family(*_pipeline_index(pipe)))


def file_family(name: str) -> Family:
    """The family object holding the community-file facts of family `name`."""
    try:
        return FILE_FAMILIES[name]
    except KeyError:
        raise SdLoraError(f"unknown model family {name!r}; expected one of: {', '.join(FILE_FAMILIES)}") from None


def file_family_of_pipeline(pipe) -> Family:
    """The family of a loaded pipeline among `FILE_FAMILIES` (also those sd-lora cannot train yet)."""
    index, config = _pipeline_index(pipe)
    for family in FILE_FAMILIES.values():
        if family.matches(index, config):
            return family
    raise SdLoraError(f"not a model sd-lora knows ({index['_class_name']}); supported: "
                      f"{', '.join(f.title for f in FILE_FAMILIES.values())}")


def file_recognisers() -> list:
    """Every family's file recognisers (shared ones once), lowest rank first."""
    ranked = dict.fromkeys(pair for family in FILE_FAMILIES.values() for pair in family.file_recognisers())
    return [recognise for _, recognise in sorted(ranked, key=lambda pair: pair[0])]
