"""peft adapters inside models <-> the neutral layout.

Export reads each adapted layer's own rank and alpha (so rank_pattern / alpha_pattern / rsLoRA are
already resolved by peft) and turns them into community alphas: scale = alpha / rank.
Import builds the peft config that recreates a file's modules exactly and injects it with
`inject_adapter_in_model` + `set_peft_model_state_dict`, removing the adapter again if anything fails.
"""

from __future__ import annotations

import collections
import math
import re

import torch

from sd_lora.errors import SdLoraError
from sd_lora.formats.community import LOHA_PARAMS, LOKR_PARAMS, AdapterWeights
from sd_lora.formats.lycoris import lokr_config, loha_config, lokr_export_params
from sd_lora.formats.names import canonical_text_encoder_path
from sd_lora.logs import adding_adapter

__all__ = ["collect_adapter_weights", "peft_adapter_for", "inject", "remove_adapter", "adapted_modules"]


def adapted_modules(model: torch.nn.Module, adapter_name: str) -> dict[str, torch.nn.Module]:
    """{module path: peft layer} of the layers that hold `adapter_name`."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    # every method keeps its tensors in dicts keyed by adapter (BOFT has no `r` dict)
    return {name: m for name, m in model.named_modules() if isinstance(m, BaseTunerLayer) and any(
        adapter_name in (getattr(m, attr, None) or {}) for attr in m.adapter_layer_names)}


def _lora_params(layer, path: str, state: dict, adapter_name: str) -> dict[str, torch.Tensor]:
    params = {"lora_A": state.pop(f"{path}.lora_A.weight"), "lora_B": state.pop(f"{path}.lora_B.weight")}
    rank = layer.r[adapter_name]
    alpha = layer.lora_alpha[adapter_name] * (math.sqrt(rank) if layer.use_rslora.get(adapter_name) else 1.0)
    params["alpha"] = torch.tensor(float(alpha))
    magnitude = state.pop(f"{path}.lora_magnitude_vector", None)
    if magnitude is not None:
        # peft normalises per output channel; the community key holds it as [out, 1(, 1, 1)]
        out = params["lora_B"].shape[0]
        params["dora_scale"] = magnitude.reshape(out, *[1] * (params["lora_B"].ndim - 1))
    return params


def _lycoris_params(layer, path: str, state: dict, adapter_name: str, names) -> dict[str, torch.Tensor]:
    params = {n: state.pop(f"{path}.{n}") for n in names if f"{path}.{n}" in state}
    alpha, rank = float(layer.alpha[adapter_name]), int(layer.r[adapter_name])
    if names is LOKR_PARAMS:
        return lokr_export_params(params, alpha, rank)
    params["alpha"] = torch.tensor(alpha)
    return params


def _adalora_params(layer, path: str, state: dict, adapter_name: str) -> dict[str, torch.Tensor] | None:
    """AdaLoRA's B·diag(E)·A · scaling/(ranknum + 1e-5) as a plain LoRA: the triplets the allocator kept (E != 0),
    E and peft's scale folded into up so that the file's one alpha (lora_alpha) over its rank gives the same ΔW.
    None when the allocator left the module no rank (the module is omitted)."""
    down, up, values = (state.pop(f"{path}.{n}") for n in ("lora_A", "lora_B", "lora_E"))
    kept = values.flatten() != 0
    rank = int(kept.sum())
    if rank == 0:
        return None
    alpha = float(layer.lora_alpha[adapter_name])
    scale = layer.scaling[adapter_name] / (layer.ranknum[adapter_name].detach() + 1e-5)
    down, up = down[kept], up[:, kept] * values[kept].reshape(1, rank) * (scale * rank / alpha)
    weight = layer.get_base_layer().weight
    if weight.ndim == 4:
        down, up = down.reshape(rank, *weight.shape[1:]), up.reshape(*up.shape, 1, 1)
    return {"lora_A": down.contiguous(), "lora_B": up.contiguous(), "alpha": torch.tensor(alpha)}


def _orthogonal_params(layer, path: str, state: dict, adapter_name: str) -> dict[str, torch.Tensor]:
    """OFT / BOFT as the exact weight update in LoRA form (rank min(out, in·k·k), alpha = rank, scale 1).

    peft rotates the input features (W' = W Rᵀ, BOFT also scales each output row); LyCORIS `oft_blocks` files
    rotate the output features, so no `oft_blocks` file reproduces a peft-trained module."""
    for key in [k for k in state if k.startswith(f"{path}.oft_") or k.startswith(f"{path}.boft_")]:
        state.pop(key)
    weight = layer.get_base_layer().weight.detach()
    flat = weight.reshape(weight.shape[0], -1).float()
    if hasattr(layer, "boft_R"):
        rotation, scale = layer.get_delta_weight(adapter_name)
        rotated = (flat @ rotation.detach().float().T) * scale.detach().float()
    else:
        rotated = flat @ layer.get_delta_weight(adapter_name).detach().float().T
    delta = rotated - flat
    out, inner = delta.shape
    rank = min(out, inner)
    eye = torch.eye(rank, dtype=delta.dtype, device=delta.device)
    up, down = (eye, delta) if out <= inner else (delta, eye)
    if weight.ndim == 4:
        down, up = down.reshape(rank, *weight.shape[1:]), up.reshape(out, rank, 1, 1)
    return {"lora_A": down.contiguous(), "lora_B": up.contiguous(), "alpha": torch.tensor(float(rank))}


def _collect_one(model: torch.nn.Module, component: str, adapter_name: str) -> dict[str, dict[str, torch.Tensor]]:
    from peft import get_peft_model_state_dict

    state = dict(get_peft_model_state_dict(model, adapter_name=adapter_name))
    modules = {}
    for path, layer in adapted_modules(model, adapter_name).items():
        kind = type(layer).__module__
        if ".loha." in kind:
            params = _lycoris_params(layer, path, state, adapter_name, LOHA_PARAMS)
        elif ".lokr." in kind:
            params = _lycoris_params(layer, path, state, adapter_name, LOKR_PARAMS)
        elif ".adalora." in kind:
            params = _adalora_params(layer, path, state, adapter_name)
            if params is None:
                continue
        elif ".oft." in kind or ".boft." in kind:
            params = _orthogonal_params(layer, path, state, adapter_name)
        else:
            params = _lora_params(layer, path, state, adapter_name)
        modules[canonical_text_encoder_path(path) if component.startswith("text_encoder") else path] = params
    if state:
        raise SdLoraError(f"{component}: adapter {adapter_name!r} has tensors no community format can hold: "
                          f"{sorted(state)[:5]} (e.g. lora bias or modules_to_save).")
    return modules


def collect_adapter_weights(components: dict[str, torch.nn.Module], adapter_name: str) -> AdapterWeights:
    """Neutral layout of adapter `adapter_name` from every component that has it."""
    weights: AdapterWeights = {}
    for component, model in components.items():
        if model is not None and adapter_name in (getattr(model, "peft_config", None) or {}):
            modules = _collect_one(model, component, adapter_name)
            if modules:
                weights[component] = modules
    if not weights:
        raise SdLoraError(f"no component holds an adapter named {adapter_name!r}; nothing to save.")
    return weights


def _lora_config(modules: dict[str, dict[str, torch.Tensor]]):
    from peft import LoraConfig

    ranks = {p: int(m["lora_A"].shape[0]) for p, m in modules.items()}
    alphas = {p: float(m["alpha"].item()) if "alpha" in m else float(ranks[p]) for p, m in modules.items()}
    r = collections.Counter(ranks.values()).most_common(1)[0][0]
    alpha = collections.Counter(alphas.values()).most_common(1)[0][0]
    dora = {p for p, m in modules.items() if "dora_scale" in m}
    if dora and dora != set(modules):
        raise SdLoraError(f"{sorted(set(modules) - dora)[0]}: some modules have dora_scale and some do not; "
                          "peft applies DoRA to all modules of an adapter or none.")
    return LoraConfig(
        r=r, lora_alpha=alpha, target_modules=sorted(modules), use_dora=bool(dora),
        rank_pattern={re.escape(p): v for p, v in ranks.items() if v != r},
        alpha_pattern={re.escape(p): v for p, v in alphas.items() if v != alpha},
    )


def _peft_state(modules: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    state = {}
    for path, params in modules.items():
        for name, tensor in params.items():
            if name == "alpha":
                continue
            if name in ("lora_A", "lora_B"):
                state[f"{path}.{name}.weight"] = tensor
            elif name == "dora_scale":
                out = params["lora_B"].shape[0]
                state[f"{path}.lora_magnitude_vector"] = (
                    tensor.reshape(out) if params["lora_B"].ndim == 2 else tensor.reshape(1, out, 1, 1))
            else:
                state[f"{path}.{name}"] = tensor
    return state


def peft_adapter_for(modules: dict[str, dict[str, torch.Tensor]], weight_shapes: dict[str, tuple[int, ...]]):
    """(peft config, peft state dict) recreating `modules` (keys: module paths inside the model)."""
    names = {n for m in modules.values() for n in m}
    if names & set(LOHA_PARAMS):
        config = loha_config(modules, weight_shapes)
    elif names & set(LOKR_PARAMS):
        config = lokr_config(modules, weight_shapes)
    else:
        config = _lora_config(modules)
    return config, _peft_state(modules)


def remove_adapter(model: torch.nn.Module, adapter_name: str) -> None:
    """Take `adapter_name` out of `model` again (layers and config); a no-op when it is not there."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for module in model.modules():
        if isinstance(module, BaseTunerLayer) and adapter_name in getattr(module, "r", {}):
            module.delete_adapter(adapter_name)
    configs = getattr(model, "peft_config", None)
    if configs is not None:
        configs.pop(adapter_name, None)
        if not configs:
            del model.peft_config
            if hasattr(model, "_hf_peft_config_loaded"):
                model._hf_peft_config_loaded = False


def _created_shapes(model: torch.nn.Module, adapter_name: str) -> dict[str, tuple[int, ...]]:
    out = {}
    for path, layer in adapted_modules(model, adapter_name).items():
        for attr in (*layer.adapter_layer_names, "lora_magnitude_vector"):
            holder = getattr(layer, attr, None)
            if holder is None or adapter_name not in holder:
                continue
            item = holder[adapter_name]
            tensor = item if isinstance(item, torch.Tensor) else item.weight
            out[f"{path}.{attr}" + (".weight" if attr in ("lora_A", "lora_B") else "")] = tuple(tensor.shape)
    return out


def inject(model: torch.nn.Module, modules: dict[str, dict[str, torch.Tensor]], adapter_name: str) -> int:
    """Add adapter `adapter_name` holding exactly `modules` to `model`; returns the number of layers adapted."""
    from peft import inject_adapter_in_model, set_peft_model_state_dict

    named = dict(model.named_modules())
    shapes = {p: tuple(named[p].weight.shape) for p in modules}
    config, state = peft_adapter_for(modules, shapes)
    dtype = named[next(iter(modules))].weight.dtype
    try:
        with adding_adapter():
            inject_adapter_in_model(config, model, adapter_name=adapter_name)
        created = _created_shapes(model, adapter_name)
        wrong = sorted(set(created) ^ set(state)) or [k for k, v in state.items() if created[k] != tuple(v.shape)]
        if wrong:
            raise SdLoraError(f"peft built a different layout for {wrong[0]} than the file holds "
                              f"(peft {list(created.get(wrong[0], ()))}, file {list(state.get(wrong[0], torch.empty(0)).shape)}).")
        set_peft_model_state_dict(model, {k: v.to(dtype) for k, v in state.items()}, adapter_name=adapter_name)
    except BaseException:
        remove_adapter(model, adapter_name)
        raise
    model._hf_peft_config_loaded = True
    return len(adapted_modules(model, adapter_name))
