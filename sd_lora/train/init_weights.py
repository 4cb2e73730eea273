"""Start training from an existing LoRA file (kohya's --network_weights / --dim_from_weights).

`read_init_weights` reads and validates the file against the models before any adapter exists (every module
must exist in the model with matching shapes); `peft_config` gives, for dim_from_weights, the adapter the file
describes (its modules, ranks and alphas); `load_into` copies the file into the injected adapters strictly:
the file's modules and the adapters' must be the same set, with the same shapes and alphas, or one error lists
every difference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from sd_lora.errors import SdLoraError

__all__ = ["InitWeights", "read_init_weights"]

_LISTED = 8
_TYPES = {"lora": "lora", "locon": "lora", "dora": "lora", "loha": "loha", "lokr": "lokr"}


@dataclass
class InitWeights:
    path: Path
    adapter_type: str  # lora | locon | dora | loha | lokr
    modules: dict[str, dict[str, dict[str, torch.Tensor]]]  # component -> model module path -> params
    model_hash: str  # sshs_model_hash of the file (SHA-256 of its tensor data), as AUTOMATIC1111 shows it

    def record(self) -> dict:
        """What the trained file's metadata says about its parent."""
        return {"file": self.path.name, "sshs_model_hash": self.model_hash, "adapter_type": self.adapter_type}

    def peft_config(self, component: str, model: torch.nn.Module, dropout: float = 0.0):
        """The peft config that recreates this file's adapter of `component` (its modules, ranks, alphas)."""
        from sd_lora.formats.peft_bridge import peft_adapter_for

        modules = self.modules.get(component)
        if not modules:
            raise SdLoraError(f"network.init_weights {self.path}: the file has no {component} modules, so "
                              f"network.dim_from_weights cannot build that adapter; train only the components the "
                              "file adapts (network.train_text_encoder)")
        named = dict(model.named_modules())
        config, _ = peft_adapter_for(modules, {p: tuple(named[p].weight.shape) for p in modules})
        if hasattr(config, "lora_dropout"):
            config.lora_dropout = dropout
        return config

    def load_into(self, components: dict[str, torch.nn.Module], adapter_name: str = "default") -> None:
        """Copy the file into the adapters injected in `components`; every difference is one error."""
        from peft import get_peft_model_state_dict, set_peft_model_state_dict

        from sd_lora.formats.peft_bridge import adapted_modules, peft_adapter_for

        problems: list[str] = []
        for component in sorted(set(self.modules) - set(components)):
            problems.append(f"{component}: the file adapts it but this run trains no {component} adapter "
                            "(set network.train_text_encoder = true to continue training it)")
        states = {}
        for component, model in components.items():
            modules = self.modules.get(component, {})
            named = dict(model.named_modules())
            _, state = peft_adapter_for(modules, {p: tuple(named[p].weight.shape) for p in modules}) \
                if modules else (None, {})
            have = {k: tuple(v.shape) for k, v in get_peft_model_state_dict(model, adapter_name=adapter_name).items()}
            layers = adapted_modules(model, adapter_name)
            for path in sorted(set(layers) - set(modules)):
                problems.append(f"{component}.{path}: adapted in this run but not in the file (use "
                                "network.dim_from_weights = true to take the file's modules, or a matching "
                                "network.preset / targets)")
            for path in sorted(set(modules) - set(layers)):
                problems.append(f"{component}.{path}: in the file but not adapted in this run")
            for key in sorted(set(state) & set(have)):
                if tuple(state[key].shape) != have[key]:
                    problems.append(f"{component}.{key}: the file holds {list(state[key].shape)}, the adapter "
                                    f"{list(have[key])} (a different rank? network.dim_from_weights = true takes "
                                    "the file's)")
            for key in sorted(set(state) ^ set(have)):
                path = key.rsplit(".", 2)[0] if key.endswith(".weight") else key.rsplit(".", 1)[0]
                if path in layers and path in modules:
                    where = "only in the file" if key in state else "only in the adapter"
                    problems.append(f"{component}.{key}: {where} (a different adapter type or DoRA setting)")
            for path in sorted(set(layers) & set(modules)):
                problems += _alpha_problem(component, path, layers[path], modules[path], adapter_name)
            states[component] = state
        if problems:
            listed = "\n  ".join(problems[:_LISTED])
            more = f"\n  ... and {len(problems) - _LISTED} more" if len(problems) > _LISTED else ""
            raise SdLoraError(f"network.init_weights {self.path}: the file does not fit this run's adapters "
                              f"({len(problems)} difference(s)):\n  {listed}{more}")
        for component, state in states.items():
            model = components[component]
            with torch.no_grad():
                set_peft_model_state_dict(model, {k: v.to(torch.float32) for k, v in state.items()},
                                          adapter_name=adapter_name)
            loaded = get_peft_model_state_dict(model, adapter_name=adapter_name)
            wrong = [k for k, v in state.items() if not torch.equal(loaded[k].float(), v.float())]
            if wrong:
                raise SdLoraError(f"network.init_weights {self.path}: {component}.{wrong[0]} did not load (peft "
                                  "kept its own values); nothing was trained")


def _alpha_problem(component: str, path: str, layer, params: dict, adapter_name: str) -> list[str]:
    if "alpha" not in params:
        return []
    rank = int(layer.r[adapter_name])
    ours = float(getattr(layer, "lora_alpha", getattr(layer, "alpha", {})).get(adapter_name, rank))
    if getattr(layer, "use_rslora", {}).get(adapter_name):
        ours *= math.sqrt(rank)
    theirs = float(params["alpha"].item())
    if not math.isclose(ours, theirs, rel_tol=1e-4):
        return [f"{component}.{path}: alpha {theirs:g} in the file, {ours:g} in this run (network.alpha; "
                "network.dim_from_weights = true takes the file's)"]
    return []


def read_init_weights(path: str | Path, components: dict[str, torch.nn.Module], family: str, unet_config,
                      network_type: str, dora: bool = False) -> InitWeights:
    """Read `path` (community / diffusers / LyCORIS file or peft folder), validated against `components`
    (every component the file adapts must be given, e.g. the text encoders too)."""
    from sd_lora.formats.imports import load_adapter_file, plan_modules
    from sd_lora.formats.metadata import model_hash

    path = Path(path)
    adapter = load_adapter_file(path)
    file_type = _TYPES.get(adapter.adapter_type, adapter.adapter_type)
    if file_type != network_type or (adapter.adapter_type == "dora") != bool(dora):
        described = f"{network_type}{' with DoRA' if dora else ''}"
        raise SdLoraError(f"network.init_weights {path}: the file is a {adapter.adapter_type} adapter, this run "
                          f"trains {described}; set network.type (and network.dora) to the file's type")
    modules = plan_modules(adapter, components, family, unet_config)
    digest = model_hash(path.read_bytes()) if path.is_file() and path.suffix == ".safetensors" else ""
    return InitWeights(path, adapter.adapter_type, modules, digest)
