"""Every shipped config loads and validates, and starts with the command that runs it."""

from pathlib import Path

import pytest

from sd_lora.config.load import load_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "train_configs").glob("*.toml"))


def test_there_are_shipped_configs():
    assert {p.name for p in CONFIGS} >= {"tiny.toml", "sd15_style.toml", "sd15_character.toml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_is_valid(path):
    load_config(path)
    first = path.read_text().splitlines()[0]
    assert first.startswith("# sd-lora train --config train_configs/" + path.name), first
