"""Failures leave nothing behind: a full disk (checked up front, or hit mid-write), a wrong-family base."""

from __future__ import annotations

import errno
from collections import namedtuple

import pytest

from sd_lora.errors import SdLoraError
from sd_lora.tools import bake_adapters, merge_adapters, resize_adapter
from tests.tools.conftest import save_random_adapter, tiny

Usage = namedtuple("Usage", "total used free")


@pytest.fixture(scope="module")
def lora(tmp_path_factory):
    return save_random_adapter(tiny("sd1"), tmp_path_factory.mktemp("fail") / "a.safetensors", seed=1)


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir())


def test_no_disk_space_is_a_clear_error(lora, tmp_path, monkeypatch):
    import shutil

    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10 << 20, 10 << 20, 1024))
    with pytest.raises(SdLoraError, match="not enough disk space"):
        resize_adapter(lora, tmp_path / "o.safetensors", rank=2)
    with pytest.raises(SdLoraError, match="not enough disk space"):
        merge_adapters([lora], tmp_path / "o.safetensors")
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    from sd_lora.models.families.unet_single_file import save_single_file

    monkeypatch.undo()
    save_single_file(tiny("sd1"), ckpt / "base.safetensors", "sd1")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: Usage(10 << 20, 10 << 20, 1024))
    with pytest.raises(SdLoraError, match="not enough disk space"):
        bake_adapters(ckpt / "base.safetensors", [lora], tmp_path / "baked.safetensors")
    assert _leftovers(tmp_path) == ["ckpt"] and _leftovers(ckpt) == ["base.safetensors"]


def test_disk_full_mid_write_leaves_nothing(lora, tmp_path, monkeypatch):
    import sd_lora.tools.output as output

    def full(f, tensors, metadata):
        f.write(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(output, "write_with_hashes", full)
    with pytest.raises(SdLoraError, match="disk filled up"):
        resize_adapter(lora, tmp_path / "o.safetensors", rank=2)
    assert _leftovers(tmp_path) == []


def test_wrong_family_base_model(lora, tmp_path):
    with pytest.raises(SdLoraError, match="SD2|SDXL|SD1"):
        bake_adapters(tiny("sdxl"), [lora], tmp_path / "o.safetensors")
    assert _leftovers(tmp_path) == []
