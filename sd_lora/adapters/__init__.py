"""Adapters through peft: one folder per method builds its peft config; `inject` puts it in a model.

    spec = adapter_spec(cfg.network, unet, "unet")
    count = inject(unet, build_peft_config(cfg.network.type, spec))
"""

from __future__ import annotations

import torch

from sd_lora.adapters import adalora, loha, lokr, lora, oft
from sd_lora.adapters.blocks import block_targets
from sd_lora.adapters.spec import AdapterSpec
from sd_lora.adapters.targets import resolve_targets
from sd_lora.errors import SdLoraError
from sd_lora.logs import adding_adapter

__all__ = ["METHODS", "AdapterSpec", "method_options", "adapter_spec", "build_peft_config", "inject", "trainable_parameters"]

METHODS = {"lora": lora.build_config, "loha": loha.build_config, "lokr": lokr.build_config,
           "adalora": adalora.build_config, "oft": oft.build_oft_config, "boft": oft.build_boft_config}
# the [network] keys a method reads besides the shared ones
_OPTIONS = {"adalora": adalora.OPTIONS, "oft": oft.OPTIONS, "boft": oft.OPTIONS}


def method_options(method: str) -> tuple[str, ...]:
    """The [network] keys only `method` reads (none for lora / loha / lokr)."""
    return _OPTIONS.get(method, ())


def adapter_spec(network, model: torch.nn.Module, component: str, *, presets: dict[str, list[str]] | None = None,
                 block_index=None, exclude: set[str] = frozenset()) -> AdapterSpec:
    """Resolve `network` (the [network] config section) against one model: a text encoder (`component` starting
    with 'text_encoder') or the denoiser ('unet', 'transformer'; `presets`, `block_index` and the preset matches to
    leave out, `exclude`, come from its family; default the UNet's)."""
    denoiser = not component.startswith("text_encoder")
    if denoiser:
        if presets is None or block_index is None:
            from sd_lora.models.families import DEFAULT_FAMILY, get_family

            unet = get_family(DEFAULT_FAMILY)
            presets = presets or unet.target_presets()
            block_index = block_index or (lambda path: unet.block_index(path, model.config))
        targets = resolve_targets(model, component, preset=network.preset, suffixes=network.unet_targets,
                                  regex=network.unet_target_regex, presets=presets)
        if exclude and not (network.unet_targets or network.unet_target_regex):
            targets = type(targets)([n for n in targets.names if n not in exclude],
                                    [n for n in targets.conv3x3 if n not in exclude])
    else:
        targets = resolve_targets(model, "text_encoder", preset=network.preset, suffixes=network.text_encoder_targets)
    conv_rank = network.conv_rank or network.rank
    conv_alpha = network.conv_alpha if network.conv_alpha is not None else network.alpha
    ranks, alphas = {}, {}
    if denoiser:
        targets, ranks, alphas = block_targets(network, targets, block_index, conv_rank, conv_alpha)
    options = {key: getattr(network, key) for key in method_options(network.type)}
    return AdapterSpec(targets, network.rank, network.alpha, conv_rank, conv_alpha, network.dropout, network.dora,
                       network.rslora, network.lokr_factor, ranks, alphas, options)


def build_peft_config(method: str, spec: AdapterSpec):
    return METHODS[method](spec)


def inject(model: torch.nn.Module, config, adapter_name: str = "default") -> int:
    """Freeze `model`, add the adapter in place (adapter weights fp32 and trainable); return modules adapted.

    Injects through peft's own `inject_adapter_in_model`, not the models' `add_adapter`: transformers and
    diffusers gate their integration layers on peft versions (transformers 5.24 refuses peft 0.21), while
    peft itself does the job on any version. The model is then marked the way those integrations mark it
    (`peft_config`, `_hf_peft_config_loaded`), so diffusers' `set_adapters`, `fuse_lora` and peft's state-dict
    helpers see the adapter.
    """
    from peft import inject_adapter_in_model

    model.requires_grad_(False)
    if adapter_name in (getattr(model, "peft_config", None) or {}):
        raise SdLoraError(f"network: the {type(model).__name__} already holds an adapter named {adapter_name!r}.")
    try:
        with adding_adapter():
            inject_adapter_in_model(config, model, adapter_name=adapter_name)
    except ValueError as e:
        raise SdLoraError(f"network: could not add the adapter to the {type(model).__name__}: {e}") from e
    model._hf_peft_config_loaded = True
    count = 0
    for module in model.modules():
        params = _adapter_params(module, adapter_name)
        if params:
            count += 1
            for p in params:
                p.data = p.data.float()
                p.requires_grad_(True)
    return count


def _adapter_params(module: torch.nn.Module, adapter_name: str) -> list[torch.nn.Parameter]:
    """The parameters a peft tuner layer holds for `adapter_name` (LoRA A/B, DoRA magnitude, LoHa/LoKr factors)."""
    names = getattr(module, "adapter_layer_names", ())
    params = []
    for attr in names:
        container = getattr(module, attr, None)
        if container is None or adapter_name not in container:
            continue
        item = container[adapter_name]
        params.extend(item.parameters() if isinstance(item, torch.nn.Module) else [item])
    return params


def trainable_parameters(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]
