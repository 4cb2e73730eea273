"""network.init_weights / dim_from_weights (kohya --network_weights / --dim_from_weights): training starts from
a LoRA file, strictly, and the result records its parent."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from sd_lora.errors import SdLoraError
from sd_lora.formats.metadata import model_hash
from sd_lora.train.recipe import LoRARecipe, run_training
from tests.train.conftest import tiny_config


@pytest.fixture(scope="module")
def parent(tiny_sd1_dir, tmp_path_factory):
    """A LoRA (rank 4, alpha 2, UNet + text encoder, attn-mlp) trained 2 steps on the tiny model."""
    from tests.train.conftest import write_dataset

    tmp = tmp_path_factory.mktemp("parent")
    data = write_dataset(tmp / "data")
    cfg = tiny_config(tiny_sd1_dir, data, tmp / "out", network={"rank": 4, "alpha": 2.0, "preset": "attn-mlp",
                                                                 "train_text_encoder": True},
                      train={"max_steps": 2, "learning_rate": 1e-2})
    return run_training(cfg).adapter_path, data


def _lora_state(recipe, component="unet"):
    from peft import get_peft_model_state_dict

    model = dict(zip(recipe.component_names, recipe.trained))[component]
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


def _start(tiny_sd1_dir, parent, tmp_path, **network):
    path, data = parent
    cfg = tiny_config(tiny_sd1_dir, data, tmp_path / "out",
                      network={"init_weights": str(path), "preset": "attn-mlp", "train_text_encoder": True, **network})
    recipe = LoRARecipe(cfg)
    try:
        recipe.setup()
    except BaseException:
        recipe.cleanup()
        raise
    return recipe


def test_adapters_start_from_the_file(tiny_sd1_dir, parent, tmp_path):
    recipe = _start(tiny_sd1_dir, parent, tmp_path, rank=4, alpha=2.0)
    try:
        file = load_file(parent[0])
        state = _lora_state(recipe)
        ups = [k for k in file if k.startswith("lora_unet_") and k.endswith("lora_up.weight")]
        assert ups and all(file[k].abs().sum() > 0 for k in ups[:3])  # the parent trained: B is not zero
        # every UNet module of the file landed: its up weight equals the adapter's B
        assert len([k for k in state if k.endswith("lora_B.weight")]) == len(ups)
        for key in ups[:5]:
            from sd_lora.formats.names import community_to_module

            _, path = community_to_module(key.split(".")[0], "sd1", recipe.denoiser.config)
            torch.testing.assert_close(state[f"{path}.lora_B.weight"], file[key].float())
        te = _lora_state(recipe, "text_encoder")
        assert any(v.abs().sum() > 0 for k, v in te.items() if k.endswith("lora_B.weight"))
    finally:
        recipe.cleanup()


def test_rank_alpha_and_modules_must_match_unless_taken_from_the_file(tiny_sd1_dir, parent, tmp_path):
    with pytest.raises(SdLoraError) as e:
        _start(tiny_sd1_dir, parent, tmp_path / "a", rank=8, alpha=2.0)
    assert "does not fit this run's adapters" in str(e.value) and "the file holds [4, " in str(e.value)
    assert "network.dim_from_weights = true" in str(e.value)
    with pytest.raises(SdLoraError, match="alpha 2 in the file, 4 in this run"):
        _start(tiny_sd1_dir, parent, tmp_path / "b", rank=4, alpha=4.0)
    with pytest.raises(SdLoraError, match="adapted in this run but not in the file"):
        _start(tiny_sd1_dir, parent, tmp_path / "c", rank=4, alpha=2.0, preset="full")
    with pytest.raises(SdLoraError, match="the file adapts it but this run trains no text_encoder adapter"):
        _start(tiny_sd1_dir, parent, tmp_path / "d", rank=4, alpha=2.0, train_text_encoder=False)
    with pytest.raises(SdLoraError, match="the file is a lora adapter, this run trains loha"):
        _start(tiny_sd1_dir, parent, tmp_path / "e", type="loha")


def test_dim_from_weights_takes_rank_alpha_and_modules(tiny_sd1_dir, parent, tmp_path):
    recipe = _start(tiny_sd1_dir, parent, tmp_path, rank=16, alpha=16.0, preset="attn", dim_from_weights=True)
    try:
        from sd_lora.formats.peft_bridge import adapted_modules

        layers = adapted_modules(recipe.denoiser, "default")
        assert {layer.r["default"] for layer in layers.values()} == {4}
        assert {layer.lora_alpha["default"] for layer in layers.values()} == {2.0}
        assert any(p.endswith("ff.net.2") for p in layers)  # attn-mlp modules from the file, not preset attn
    finally:
        recipe.cleanup()


def test_trained_file_records_its_parent(tiny_sd1_dir, parent, tmp_path):
    path, data = parent
    cfg = tiny_config(tiny_sd1_dir, data, tmp_path / "out",
                      network={"init_weights": str(path), "dim_from_weights": True, "train_text_encoder": True},
                      train={"max_steps": 1})
    out = run_training(cfg).adapter_path
    with safe_open(str(out), "pt") as f:
        record = json.loads(f.metadata()["sd_lora.init_weights"])
    assert record == {"file": path.name, "sshs_model_hash": model_hash(path.read_bytes()), "adapter_type": "lora"}
    with safe_open(str(path), "pt") as f:
        assert f.metadata()["sshs_model_hash"] == record["sshs_model_hash"]  # what A1111 shows for the parent


def test_dim_from_weights_needs_a_file():
    from sd_lora.config.load import ConfigError, config_from_dict

    with pytest.raises(ConfigError, match="network.dim_from_weights: needs network.init_weights"):
        config_from_dict({"network": {"dim_from_weights": True}})
