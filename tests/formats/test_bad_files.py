"""Every broken or foreign file fails with one clear SdLoraError, and the pipeline is left unchanged."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import load_file, save_file

from sd_lora.errors import SdLoraError
from sd_lora.formats import apply_adapter_file, load_adapter_file, save_adapter
from sd_lora.models.tiny import build_tiny_pipeline
from tests.formats.conftest import add_adapters


def _adapted_count(pipe) -> int:
    from peft.tuners.tuners_utils import BaseTunerLayer

    models = [pipe.unet, pipe.text_encoder] + ([pipe.text_encoder_2] if getattr(pipe, "text_encoder_2", None) else [])
    return sum(isinstance(m, BaseTunerLayer) for model in models for m in model.modules())


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A valid tiny SD1 community file, a tiny SDXL one, and a clean SD1 pipeline to apply them to."""
    root = tmp_path_factory.mktemp("bad")
    out = {}
    for family in ("sd1", "sdxl"):
        pipe = build_tiny_pipeline(family, seed=0)
        comps = add_adapters(pipe, "lora", preset="attn")
        out[family] = root / f"{family}.safetensors"
        save_adapter(out[family], comps, family, unet_config=dict(pipe.unet.config), save_precision=torch.float32)
    out["pipe"] = build_tiny_pipeline("sd1", seed=0)
    out["root"] = root
    return out


def _refused(files, path, *needles, **kw):
    pipe = files["pipe"]
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    with pytest.raises(SdLoraError) as info:
        apply_adapter_file(pipe, path, "bad", **kw)
    message = str(info.value)
    for needle in needles:
        assert needle in message, message
    assert _adapted_count(pipe) == 0
    after = pipe.unet.state_dict()
    assert set(after) == set(before) and all(torch.equal(after[k], before[k]) for k in before)
    return message


def test_valid_file_applies_so_the_fixture_is_sound(files):
    pipe = build_tiny_pipeline("sd1", seed=0)
    report = apply_adapter_file(pipe, files["sd1"], "ok")
    assert report.modules["unet"] > 0


def test_sdxl_lora_on_sd1_names_the_family_found(files):
    message = _refused(files, files["sdxl"], "SDXL", "SD1")
    assert "lora_te1_" in message or "lora_unet_" in message


def test_truncated_safetensors(files, tmp_path):
    blob = files["sd1"].read_bytes()
    bad = tmp_path / "cut.safetensors"
    bad.write_bytes(blob[: len(blob) - 100])
    _refused(files, bad, "truncated")


def test_header_length_larger_than_the_file(files, tmp_path):
    blob = files["sd1"].read_bytes()
    bad = tmp_path / "len.safetensors"
    bad.write_bytes(struct.pack("<Q", len(blob) * 10) + blob[8:])
    _refused(files, bad, "header length", "larger than the file")


def test_non_json_header(tmp_path, files):
    bad = tmp_path / "json.safetensors"
    header = b"{not json at all" + b" " * 16
    bad.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 16)
    _refused(files, bad, "not valid JSON")


def test_pickle_refused_by_default_with_the_reason(files, tmp_path):
    ckpt = tmp_path / "lora.ckpt"
    torch.save(load_file(str(files["sd1"])), ckpt)
    _refused(files, ckpt, "pickle", "arbitrary code", "allow_pickle")
    adapter = load_adapter_file(ckpt, allow_pickle=True)
    assert adapter.format == "community" and len(adapter.tensors) == len(load_file(str(files["sd1"])))


def test_wrong_shapes_name_the_module(files, tmp_path):
    state = load_file(str(files["sd1"]))
    key = next(k for k in sorted(state) if k.endswith("attn1_to_q.lora_down.weight"))
    state[key] = torch.zeros(state[key].shape[0], state[key].shape[1] + 3)
    bad = tmp_path / "shape.safetensors"
    save_file(state, str(bad))
    _refused(files, bad, "attn1.to_q", "do not fit")


def test_unknown_key_names(files, tmp_path):
    state = load_file(str(files["sd1"]))
    state["lora_unet_down_blocks_0_nothing_here.lora_down.weight"] = torch.zeros(4, 4)
    state["lora_unet_down_blocks_0_nothing_here.lora_up.weight"] = torch.zeros(4, 4)
    bad = tmp_path / "unknown.safetensors"
    save_file(state, str(bad))
    _refused(files, bad, "nothing_here")


def test_foreign_keys_are_not_an_adapter(files, tmp_path):
    bad = tmp_path / "model.safetensors"
    save_file({"model.diffusion_model.x.weight": torch.zeros(2)}, str(bad))
    _refused(files, bad, "model.diffusion_model.x.weight")


def test_nan_values_are_reported(files, tmp_path):
    state = load_file(str(files["sd1"]))
    key = next(k for k in sorted(state) if k.endswith("attn2_to_v.lora_up.weight"))
    state[key] = state[key].clone()
    state[key][0, 0] = float("nan")
    bad = tmp_path / "nan.safetensors"
    save_file(state, str(bad))
    _refused(files, bad, "NaN", "attn2.to_v")


def test_missing_alpha_means_scale_one(files, tmp_path):
    state = load_file(str(files["sd1"]))
    state = {k: v for k, v in state.items() if not k.endswith(".alpha")}
    path = tmp_path / "noalpha.safetensors"
    save_file(state, str(path))
    pipe = build_tiny_pipeline("sd1", seed=0)
    apply_adapter_file(pipe, path, "n")
    scalings = {layer.scaling["n"] for layer in pipe.unet.modules() if "n" in getattr(layer, "scaling", {})}
    assert scalings == {1.0}


def test_metadata_json_is_valid(files):
    from safetensors import safe_open

    with safe_open(str(files["sd1"]), "pt") as f:
        meta = f.metadata()
    json.loads(meta["ss_network_args"])


def test_input_axis_dora_scale_is_refused_with_the_reason(files, tmp_path):
    state = load_file(str(files["sd1"]))
    key = next(k for k in sorted(state) if k.endswith("attn1_to_q.lora_down.weight"))
    name = key.removesuffix(".lora_down.weight")
    for k in [k for k in state if k.endswith(".lora_down.weight")]:
        n = k.removesuffix(".lora_down.weight")
        state[f"{n}.dora_scale"] = torch.ones(state[f"{n}.lora_up.weight"].shape[0], 1)
    # a square layer: [1, in] and [out, 1] hold the same number of values, only the layout tells them apart
    assert state[key].shape[1] == state[f"{name}.lora_up.weight"].shape[0]
    state[f"{name}.dora_scale"] = torch.ones(1, state[key].shape[1])
    bad = tmp_path / "dora_in.safetensors"
    save_file(state, str(bad))
    _refused(files, bad, "input axis", "attn1_to_q")
