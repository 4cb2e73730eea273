"""Metadata, hashes, atomic writes and the coverage check of save_adapter."""

from __future__ import annotations

import hashlib
import json
import struct

import pytest
import torch
from safetensors import safe_open

from sd_lora.errors import SdLoraError
from sd_lora.formats import community_metadata, save_adapter
from sd_lora.formats.metadata import RECIPE_KEY
from tests.formats.conftest import add_adapters


@pytest.fixture(scope="module")
def adapted():
    from sd_lora.models.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("sdxl", seed=0)
    return pipe, add_adapters(pipe, "lora", preset="full")


INFO = {"family": "sdxl", "prediction_type": "epsilon", "adapter_type": "locon", "output_name": "my-style",
        "title": "my-style", "resolution": 1024, "steps": 10, "learning_rate": 1e-4, "seed": 3, "clip_skip": 2,
        "network_args": {"conv_dim": 4, "conv_alpha": 1}, "tag_frequency": {"img": {"red": 3, "square": 1}},
        "dataset_dirs": {"img": {"n_repeats": 2, "img_count": 4}}, "trigger_words": ["zzstyle"],
        "inference": {"scheduler": "euler", "steps": 30, "guidance": 7.0}}


def _save(path, pipe, comps, **kw):
    return save_adapter(path, comps, "sdxl", unet_config=dict(pipe.unet.config), save_precision=torch.float32, **kw)


def test_community_file_carries_full_metadata_and_correct_hashes(adapted, tmp_path):
    pipe, comps = adapted
    path = tmp_path / "a.safetensors"
    _save(path, pipe, comps, metadata=community_metadata(INFO))
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert meta["ss_base_model_version"] == "sdxl_base_v1-0" and meta["ss_v2"] == "False"
    assert meta["ss_network_module"] == "networks.lora"
    assert meta["ss_network_dim"] == "4" and meta["ss_network_alpha"] == "2.0"
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "4", "conv_alpha": "1.0"}
    assert json.loads(meta["ss_tag_frequency"]) == {"img": {"red": 3, "square": 1}}
    assert meta["ss_output_name"] == "my-style" and meta["ss_seed"] == "3"
    assert meta["modelspec.sai_model_spec"] == "1.0.1"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
    assert meta["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    assert meta["modelspec.resolution"] == "1024x1024" and meta["modelspec.encoder_layer"] == "2"
    assert meta["modelspec.prediction_type"] == "epsilon" and "." not in meta["modelspec.date"]
    assert json.loads(meta[RECIPE_KEY])["scheduler"] == "euler"
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    assert meta["sshs_model_hash"] == hashlib.sha256(blob[8 + n:]).hexdigest()
    assert meta["sshs_legacy_hash"] == hashlib.sha256(blob[0x100000:0x110000]).hexdigest()[:8]
    assert all(isinstance(v, str) for v in meta.values())


def test_model_hash_ignores_metadata_edits(adapted, tmp_path):
    pipe, comps = adapted
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    _save(a, pipe, comps, metadata={"ss_output_name": "one"})
    _save(b, pipe, comps, metadata={"ss_output_name": "a much longer name"})
    hashes = []
    for p in (a, b):
        with safe_open(str(p), "pt") as f:
            hashes.append(f.metadata()["sshs_model_hash"])
    assert hashes[0] == hashes[1] and a.read_bytes() != b.read_bytes()


def test_v_prediction_sd2_metadata():
    meta = community_metadata({"family": "sd2", "prediction_type": "v_prediction", "resolution": 768})
    assert meta["ss_base_model_version"] == "sd_v2_v" and meta["ss_v2"] == "True"
    assert meta["modelspec.architecture"] == "stable-diffusion-v2-768-v/lora"
    assert meta["modelspec.prediction_type"] == "v"


def test_coverage_mismatch_fails_loudly_and_writes_nothing(adapted, tmp_path, monkeypatch):
    import sd_lora.formats.export as export

    real = export.plan_modules

    def lossy(*args, **kw):
        plan = real(*args, **kw)
        plan["unet"].pop(next(iter(plan["unet"])))
        return plan

    monkeypatch.setattr(export, "plan_modules", lossy)
    pipe, comps = adapted
    path = tmp_path / "a.safetensors"
    with pytest.raises(SdLoraError, match="not written"):
        _save(path, pipe, comps)
    assert list(tmp_path.iterdir()) == []


def test_save_without_adapter_is_a_clear_error(tmp_path):
    from sd_lora.models.tiny import build_tiny_pipeline

    pipe = build_tiny_pipeline("sd1", seed=0)
    with pytest.raises(SdLoraError, match="no component holds an adapter"):
        save_adapter(tmp_path / "x.safetensors", {"unet": pipe.unet}, "sd1", unet_config=dict(pipe.unet.config))
    assert not (tmp_path / "x.safetensors").exists()
