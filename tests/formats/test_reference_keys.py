"""Full-size sd1/sd2/sdxl: the community names, shapes and dtypes equal the reference trainer's list exactly.

Models are built on the meta device; only adapter tensors are ever materialised.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest
import torch

from sd_lora.adapters.targets import resolve_targets
from sd_lora.formats import community_to_module, module_to_community, to_community

# The reference trainer's exact key list (names, shapes, dtypes at full size), copied into the repository so the
# test runs on any clone: see tests/formats/data/README.md.
REFERENCE = json.loads(gzip.decompress((Path(__file__).parent / "data" / "kohya_lora_keys.json.gz").read_bytes()))
_NOT_ATTENTION = re.compile(r"resnets|samplers|in_layers|out_layers|emb_layers|skip_connection|_op\.|_conv\.")


def _meta_models(family):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from sd_lora.models.families.unet_architectures import text_encoder_configs, unet_config

    with torch.device("meta"):
        models = {"unet": UNet2DConditionModel(**unet_config(family))}
        for i, cfg in enumerate(text_encoder_configs(family)):
            cls = CLIPTextModelWithProjection if i else CLIPTextModel
            models["text_encoder_2" if i else "text_encoder"] = cls(CLIPTextConfig(**cfg))
    return models


@pytest.fixture(scope="module", params=["sd1", "sd2", "sdxl"])
def family_models(request):
    return request.param, _meta_models(request.param)


def _neutral(models, unet_preset):
    """Rank-4 LoRA weights (meta tensors) on every target, in the models' own module paths."""
    weights = {}
    for component, model in models.items():
        kind = "unet" if component == "unet" else "text_encoder"
        targets = resolve_targets(model, kind, preset=unet_preset if kind == "unet" else "attn-mlp")
        named = dict(model.named_modules())
        modules = {}
        for path in targets.names:
            w = named[path].weight
            down = (4, *w.shape[1:]) if w.ndim == 4 else (4, w.shape[1])
            up = (w.shape[0], 4, 1, 1) if w.ndim == 4 else (w.shape[0], 4)
            alpha = 1.0 if path in targets.conv3x3 else 2.0
            modules[path] = {"lora_A": torch.empty(down, device="meta"), "lora_B": torch.empty(up, device="meta"),
                             "alpha": torch.tensor(alpha)}
        weights[component] = modules
    return weights


def _described(state):
    return {k: [list(v.shape), str(v.dtype)] for k, v in state.items()}


def test_full_preset_names_shapes_dtypes_equal_the_reference(family_models):
    family, models = family_models
    state = to_community(_neutral(models, "full"), family, dict(models["unet"].config))
    assert _described(state) == REFERENCE[family]


def test_attention_subset_equals_the_reference_without_resnets_and_samplers(family_models):
    family, models = family_models
    state = to_community(_neutral(models, "attn-mlp"), family, dict(models["unet"].config))
    expected = {k: v for k, v in REFERENCE[family].items() if not _NOT_ATTENTION.search(k)}
    assert _described(state) == expected


def test_every_reference_name_maps_back_to_a_module_of_the_model(family_models):
    family, models = family_models
    config = dict(models["unet"].config)
    named = {c: dict(m.named_modules()) for c, m in models.items()}
    for name in {k.split(".")[0] for k in REFERENCE[family]}:
        component, path = community_to_module(name, family, config)
        model_path = path if component == "unet" or hasattr(models[component], "text_model") else \
            path.removeprefix("text_model.")
        assert model_path in named[component], name
        assert module_to_community(component, path, family, config) == name


def test_sd1_full_size_export_through_save_adapter(tmp_path):
    """The real export path (peft layers injected on meta, adapter tensors materialised), fp32."""
    from safetensors import safe_open

    from sd_lora.adapters import adapter_spec, build_peft_config, inject
    from sd_lora.config.schema import NetworkConfig
    from sd_lora.formats import save_adapter

    models = _meta_models("sd1")
    for component, model in models.items():
        net = NetworkConfig(preset="full" if component == "unet" else "attn-mlp", rank=4, alpha=2, conv_rank=4,
                            conv_alpha=1)
        inject(model, build_peft_config("lora", adapter_spec(net, model, component)))
        for module in model.modules():
            for attr in ("lora_A", "lora_B"):
                for layer in getattr(module, attr, {}).values():
                    layer.to_empty(device="cpu")
                    torch.nn.init.normal_(layer.weight)
    path = tmp_path / "sd1.safetensors"
    report = save_adapter(path, models, "sd1", unet_config=dict(models["unet"].config), save_precision=torch.float32)
    assert report.applied == {"unet": 278, "text_encoder": 72}
    with safe_open(str(path), "pt") as f:
        described = {k: [list(f.get_slice(k).get_shape()), str(f.get_tensor(k).dtype)] for k in f.keys()}
    assert described == REFERENCE["sd1"]
