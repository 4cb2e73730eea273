"""resize: Eckart–Young-optimal fixed rank, the dynamic rules' definitions, lossless at the same rank, metadata."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from sd_lora.errors import SdLoraError
from sd_lora.tools import resize_adapter
from tests.tools.conftest import delta, modules_of, save_random_adapter, tiny, with_spectrum

# A constructed spectrum and the ranks each rule must pick for it, worked out by hand:
SPECTRUM = [10.0, 5.0, 3.0, 1.0, 0.5, 0.2, 0.1, 0.05]
# sum 19.85, sum of squares 135.3025 (cumulative squares 100, 125, 134, 135, ...; cumulative sums 10, 15, 18, 19, ...)
EXPECTED = [
    ("sv_ratio", 4.0, 3),        # keep s >= 10/4 = 2.5: 10, 5, 3
    ("sv_ratio", 20.0, 5),       # keep s >= 0.5: 10, 5, 3, 1, 0.5
    ("sv_fro", 0.9, 2),          # need squares >= 0.81 * 135.3025 = 109.6: 100 < 109.6 <= 125
    ("sv_fro", 0.99, 3),         # need >= 0.9801 * 135.3025 = 132.6: 125 < 132.6 <= 134
    ("sv_cumulative", 0.9, 3),   # need sums >= 17.865: 15 < 17.865 <= 18
    ("sv_cumulative", 0.75, 2),  # need >= 14.89: 10 < 14.89 <= 15
    ("sv_cumulative", 1.0, 8),   # everything
]
MODULE = "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("resize")
    pipe = tiny("sd1")
    r32 = save_random_adapter(pipe, d / "r32.safetensors", rank=32, alpha=16.0, seed=1, conv=True)
    r8 = save_random_adapter(pipe, d / "r8.safetensors", rank=8, alpha=4.0, seed=2)
    spectrum = with_spectrum(r8, d / "spectrum.safetensors", MODULE, SPECTRUM)
    loha = save_random_adapter(pipe, d / "loha.safetensors", kind="loha", rank=4, seed=3, text_encoder=False,
                               unet_targets=["to_q", "to_k", "to_v", "to_out.0"])
    return {"r32": r32, "r8": r8, "spectrum": spectrum, "loha": loha}


def test_fixed_rank_is_the_optimal_truncation(files, tmp_path):
    out = tmp_path / "r8.safetensors"
    report = resize_adapter(files["r32"], out, rank=8, conv_rank=4, save_precision="fp32")
    before, after = modules_of(files["r32"]), modules_of(out)
    assert set(before) == set(after)
    for name, params in before.items():
        want = delta(params).double()
        conv3 = params["lora_down.weight"].ndim == 4 and params["lora_down.weight"].shape[-1] == 3
        k = 4 if conv3 else 8
        assert after[name]["lora_down.weight"].shape[0] == k
        s = torch.linalg.svdvals(want)
        optimal = float(torch.sqrt((s[k:] ** 2).sum()))
        err = float(torch.linalg.norm(delta(after[name]).double() - want))
        assert abs(err - optimal) <= 1e-4 * max(1.0, float(s[0])), name
        # kohya keeps the alpha / rank scale
        assert float(after[name]["alpha"]) / k == pytest.approx(16.0 / 32)
    row = next(r for r in report.rows if r.module == MODULE)
    assert (row.old_rank, row.new_rank) == (32, 8)
    assert report.size_after < report.size_before


@pytest.mark.parametrize("rule, param, rank", EXPECTED)
def test_dynamic_rules_pick_the_defined_rank(files, tmp_path, rule, param, rank):
    out = tmp_path / "d.safetensors"
    report = resize_adapter(files["spectrum"], out, dynamic=rule, param=param, save_precision="fp32")
    got = modules_of(out)[MODULE]
    assert got["lora_down.weight"].shape[0] == rank
    row = next(r for r in report.rows if r.module == MODULE)
    s = torch.tensor(SPECTRUM, dtype=torch.float64)
    assert row.retained == pytest.approx(float(torch.sqrt((s[:rank] ** 2).sum() / (s ** 2).sum())), rel=1e-5)
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["ss_network_dim"] == str(max(r.new_rank for r in report.rows))
    tool = json.loads(meta["sd_lora.tool"])
    assert (tool["tool"], tool["dynamic"], tool["param"]) == ("resize", rule, param)
    assert rule in meta["ss_training_comment"]
    assert meta["ss_steps"] == "10" and meta["ss_seed"] == "2"  # the input's training facts are kept
    assert meta["modelspec.title"] == "d" and meta["ss_base_model_version"] == "sd_v1"
    blob = out.read_bytes()  # the stored hashes are those of the file's own bytes (formats.metadata's definition)
    from sd_lora.formats.metadata import legacy_hash, model_hash

    assert meta["sshs_model_hash"] == model_hash(blob) and meta["sshs_legacy_hash"] == legacy_hash(blob)


def test_same_rank_is_lossless(files, tmp_path):
    out = tmp_path / "same.safetensors"
    resize_adapter(files["r8"], out, rank=8, save_precision="fp32")
    before, after = modules_of(files["r8"]), modules_of(out)
    for name, params in before.items():
        want = delta(params)
        assert float((delta(after[name]) - want).abs().max()) <= 1e-5 * float(want.abs().max()), name


def test_bad_arguments(files, tmp_path):
    out = tmp_path / "o.safetensors"
    with pytest.raises(SdLoraError, match="above the input's rank"):
        resize_adapter(files["r8"], out, rank=16)
    with pytest.raises(SdLoraError, match="out of range for sv_fro"):
        resize_adapter(files["r8"], out, dynamic="sv_fro", param=1.5)
    with pytest.raises(SdLoraError, match="out of range for sv_ratio"):
        resize_adapter(files["r8"], out, dynamic="sv_ratio", param=0.5)
    with pytest.raises(SdLoraError, match="either --rank"):
        resize_adapter(files["r8"], out, rank=4, dynamic="sv_fro", param=0.9)
    with pytest.raises(SdLoraError, match="also an input"):
        resize_adapter(files["r8"], files["r8"], rank=4)
    with pytest.raises(SdLoraError, match="no such file"):
        resize_adapter(tmp_path / "missing.safetensors", out, rank=4)
    assert not list(tmp_path.iterdir())


def test_loha_becomes_the_optimal_lora_of_its_delta(files, tmp_path):
    out = tmp_path / "loha_r6.safetensors"
    resize_adapter(files["loha"], out, rank=6, save_precision="fp32")
    loha, got = modules_of(files["loha"]), modules_of(out)
    assert set(loha) == set(got)
    for name, p in loha.items():
        scale = float(p["alpha"]) / p["hada_w1_b"].shape[0]
        want = (scale * (p["hada_w1_a"] @ p["hada_w1_b"]) * (p["hada_w2_a"] @ p["hada_w2_b"])).double()
        s = torch.linalg.svdvals(want)
        assert got[name]["lora_down.weight"].shape[0] == 6
        err = float(torch.linalg.norm(delta(got[name]).double() - want))
        assert abs(err - float(torch.sqrt((s[6:] ** 2).sum()))) <= 1e-4 * max(1.0, float(s[0])), name


def test_peft_folder_input_needs_the_family_and_resizes(tmp_path):
    """A peft adapter folder (diffusers' training scripts write these) is an input like any file."""
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
    from safetensors.torch import save_file

    pipe = tiny("sd1")
    config = LoraConfig(r=8, lora_alpha=4, target_modules=["to_q", "to_v"], init_lora_weights=False)
    inject_adapter_in_model(config, pipe.unet, adapter_name="default")
    folder = tmp_path / "peft" / "unet"
    folder.mkdir(parents=True)
    config.save_pretrained(str(folder))
    state = get_peft_model_state_dict(pipe.unet, adapter_name="default")
    save_file(state, str(folder / "adapter_model.safetensors"))
    with pytest.raises(SdLoraError, match="--family"):
        resize_adapter(tmp_path / "peft", tmp_path / "r.safetensors", rank=4)
    out = tmp_path / "r.safetensors"
    resize_adapter(tmp_path / "peft", out, rank=8, family="sd1", save_precision="fp32")
    got = modules_of(out)
    assert len(got) == len([k for k in state if k.endswith("lora_A.weight")]) > 0
    for key, down in state.items():
        if not key.endswith("lora_A.weight"):
            continue
        path = key[: -len(".lora_A.weight")]
        want = 0.5 * state[path + ".lora_B.weight"] @ down  # alpha / r = 4 / 8
        name = "lora_unet_" + path.replace(".", "_")
        assert float((delta(got[name]) - want).abs().max()) <= 1e-5 * float(want.abs().max()), name
