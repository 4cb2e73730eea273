"""FLUX.1's community-file facts (prefixes, names, metadata, recognisers), on their own until the FLUX family
module registers the family: `Flux` inherits them (`class Flux(FluxFiles)`), and `FILE_FAMILIES` then holds it."""

from __future__ import annotations

from sd_lora.models.families import flux_keys, transformer_detect
from sd_lora.models.families.base import Family, transformer_file_metadata

__all__ = ["FluxFiles"]

_IMPLEMENTATION = "https://github.com/black-forest-labs/flux"
# by the model variant (`flux_keys.variant`), as kohya's flux_train_network.py writes them
_FILE_SPEC = {
    "flux-dev": ("flux-1-dev/lora", "flux1", _IMPLEMENTATION),
    "flux-schnell": ("flux-1-schnell/lora", "flux1", _IMPLEMENTATION),
}


class FluxFiles(Family):
    name = "flux"
    title = "FLUX.1"
    short_name = "FLUX.1"
    denoiser = "transformer"
    community_prefixes = {"transformer": flux_keys.DENOISER_PREFIX, **flux_keys.TEXT_ENCODER_PREFIXES}
    community_naming = "original"
    keys = flux_keys
    kohya_script = "flux_train_network.py"
    bakes_to_single_file = False

    @classmethod
    def matches(cls, model_index, denoiser_config) -> bool:
        return model_index.get("_class_name", "").startswith("Flux") or \
            denoiser_config.get("_class_name", "").startswith("Flux")

    def default_variant(self) -> str:
        return "flux-dev"

    def file_metadata(self, v_prediction: bool = False, variant: str | None = None) -> dict[str, str]:
        return transformer_file_metadata(*_FILE_SPEC[variant or self.default_variant()])

    def file_recognisers(self):
        return [(20, transformer_detect.flux_names), (30, transformer_detect.attention_width),
                (40, transformer_detect.flux_metadata)]
