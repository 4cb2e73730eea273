"""model.weight_dtype and train.blocks_to_swap: accepted values load, bad ones are one clear error each."""

import pytest

from sd_lora.config.load import ConfigError, load_config


def _load(tmp_path, text):
    path = tmp_path / "c.toml"
    path.write_text(text)
    return load_config(path)


def test_defaults_change_nothing(tmp_path):
    cfg = _load(tmp_path, "")
    assert cfg.model.weight_dtype == "auto" and cfg.train.blocks_to_swap == 0


@pytest.mark.parametrize("dtype", ["fp8_e4m3fn", "fp8_e5m2", "bf16", "fp16", "fp32"])
def test_every_storage_dtype_loads(tmp_path, dtype):
    cfg = _load(tmp_path, f"[model]\nweight_dtype = '{dtype}'\n[train]\nblocks_to_swap = 8\n")
    assert cfg.model.weight_dtype == dtype and cfg.train.blocks_to_swap == 8


def test_unknown_storage_dtype_names_the_choices(tmp_path):
    with pytest.raises(ConfigError) as e:
        _load(tmp_path, "[model]\nweight_dtype = 'fp8'\n")
    assert "model.weight_dtype" in str(e.value) and "fp8_e4m3fn" in str(e.value)


def test_negative_blocks_to_swap(tmp_path):
    with pytest.raises(ConfigError, match=r"train.blocks_to_swap: must not be negative \(0: off\), got -2"):
        _load(tmp_path, "[train]\nblocks_to_swap = -2\n")


def test_blocks_to_swap_must_be_an_integer(tmp_path):
    with pytest.raises(ConfigError, match="train.blocks_to_swap: expected integer"):
        _load(tmp_path, "[train]\nblocks_to_swap = 2.5\n")


def test_fp8_storage_and_bitsandbytes_quantisation_exclude_each_other(tmp_path):
    with pytest.raises(ConfigError, match="model.weight_dtype = 'fp8_e4m3fn' and model.quantize = 'nf4' both"):
        _load(tmp_path, "[model]\nweight_dtype = 'fp8_e4m3fn'\nquantize = 'nf4'\n")
