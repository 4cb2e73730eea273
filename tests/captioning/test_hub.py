"""Where a captioner's files come from: a folder, a cached hub snapshot, or one clear error."""

from __future__ import annotations

import pytest

from sd_lora.captioning.hub import resolve_model
from sd_lora.errors import SdLoraError
from tests.models.hub_cache import add_to_hub_cache


def test_local_folder_needs_its_files(tmp_path):
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text("{}")
    found = resolve_model(str(tmp_path / "m"), ("config.json",), "--model")
    assert found.folder == (tmp_path / "m").resolve() and found.revision is None
    with pytest.raises(SdLoraError, match="lacks model.onnx, selected_tags.csv"):
        resolve_model(str(tmp_path / "m"), ("model.onnx", "selected_tags.csv"), "--model")


def test_neither_folder_nor_hub_id(tmp_path):
    with pytest.raises(SdLoraError, match="not a folder and not a hub id"):
        resolve_model(str(tmp_path / "nothing"), ("config.json",), "--model")


def test_cached_snapshot_and_offline_miss(tmp_path, monkeypatch):
    from huggingface_hub import constants

    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "config.json").write_text("{}")
    snapshot = add_to_hub_cache(tmp_path / "home", "org/cap", tmp_path / "src", commit="ab" * 20)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "home" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    found = resolve_model("org/cap", ("config.json",), "--model")
    assert found.folder == snapshot and found.revision == "ab" * 20
    with pytest.raises(SdLoraError, match=r"lacks model.onnx; fetch the whole model with `hf download org/cap`"):
        resolve_model("org/cap", ("model.onnx",), "--model")
    with pytest.raises(SdLoraError, match=r"`hf download org/other --revision v2`"):
        resolve_model("org/other", ("config.json",), "--model", revision="v2")
