"""`sd-lora inspect` and `sd-lora convert` on files exported from the tiny models."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from sd_lora.cli.main import main
from sd_lora.formats import save_adapter
from sd_lora.models.tiny import build_tiny_pipeline
from tests.formats.conftest import add_adapters


def _read(path):
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """{family: community file} with a LoCon (full preset) adapter, rank 4 / alpha 2, convs alpha 1."""
    root = tmp_path_factory.mktemp("cli")
    out = {}
    for family in ("sd1", "sd2", "sdxl"):
        pipe = build_tiny_pipeline(family, seed=0)
        comps = add_adapters(pipe, "lora", preset="full")
        out[family] = root / f"{family}.safetensors"
        save_adapter(out[family], comps, family, unet_config=dict(pipe.unet.config), save_precision=torch.float16,
                     metadata={"ss_output_name": f"tiny-{family}"})
    return out


@pytest.mark.parametrize("family", ["sd1", "sd2", "sdxl"])
def test_inspect_json_per_family(exported, capsys, family):
    path = exported[family]
    assert main(["inspect", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    tensors, meta = _read(path)
    assert info["format"] == "community" and info["adapter_type"] == "locon"
    assert info["family"] == family
    expected = {"sd1": {"unet", "text_encoder"}, "sd2": {"unet", "text_encoder"},
                "sdxl": {"unet", "text_encoder", "text_encoder_2"}}[family]
    assert set(info["modules"]) == expected
    downs = {k for k in tensors if k.endswith(".lora_down.weight")}
    assert sum(info["modules"].values()) == len(downs)
    convs = sum(1 for k in downs if tensors[k].ndim == 4 and tensors[k].shape[-1] == 3)
    pairs = {(e["rank"], e["alpha"]): e["modules"] for e in info["rank_alpha"]}
    assert pairs == {(4, 2.0): len(downs) - convs, (4, 1.0): convs}
    assert len(info["per_module"]) == convs and all(v["alpha"] == 1.0 for v in info["per_module"].values())
    assert info["metadata"]["ss_output_name"] == f"tiny-{family}"
    assert info["hashes"]["sshs_model_hash"] == meta["sshs_model_hash"]
    assert info["hashes"]["sshs_legacy_hash"] == meta["sshs_legacy_hash"]
    assert info["dtypes"] == ["float16"]


def test_inspect_text(exported, capsys):
    assert main(["inspect", str(exported["sdxl"])]) == 0
    out = capsys.readouterr().out
    assert "family:        sdxl" in out and "locon" in out and "text_encoder_2" in out
    assert "ss_base_model_version: sdxl_base_v1-0" in out


@pytest.mark.parametrize("family", ["sd1", "sdxl"])
def test_convert_community_diffusers_community_is_bit_identical(exported, tmp_path, family):
    src = exported[family]
    mid, back = tmp_path / "d.safetensors", tmp_path / "c.safetensors"
    assert main(["convert", str(src), str(mid), "--to", "diffusers"]) == 0
    tensors, meta = _read(mid)
    assert all(k.startswith(("unet.", "text_encoder.", "text_encoder_2.")) for k in tensors)
    assert "lora_adapter_metadata" in meta
    assert main(["convert", str(mid), str(back), "--to", "community", "--family", family]) == 0
    a, am = _read(src)
    b, bm = _read(back)
    assert set(a) == set(b)
    assert all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)
    assert am == bm
    assert back.read_bytes() == src.read_bytes()


def test_converted_diffusers_file_gives_the_same_image_as_the_community_file(exported, tmp_path):
    mid = tmp_path / "d.safetensors"
    assert main(["convert", str(exported["sd1"]), str(mid), "--to", "diffusers"]) == 0
    images = []
    for path in (exported["sd1"], mid):
        pipe = build_tiny_pipeline("sd1", seed=0)
        pipe.set_progress_bar_config(disable=True)
        pipe.load_lora_weights(str(path), adapter_name="x")
        images.append(pipe("a", num_inference_steps=1, height=32, width=32, output_type="np",
                           generator=torch.Generator().manual_seed(0)).images)
    assert abs(images[0] - images[1]).max() < 1e-5


def test_cli_errors_are_reported_without_traceback(tmp_path, capsys):
    bad = tmp_path / "x.ckpt"
    torch.save({"a": torch.zeros(1)}, bad)
    assert main(["inspect", str(bad)]) == 2
    assert "pickle" in capsys.readouterr().err
    assert main(["convert", str(tmp_path / "missing.safetensors"), str(tmp_path / "o.safetensors"),
                 "--to", "diffusers"]) == 2
    assert not (tmp_path / "o.safetensors").exists()


def test_inspect_diffusers_file_counts_the_same_modules(exported, tmp_path, capsys):
    mid = tmp_path / "d.safetensors"
    assert main(["convert", str(exported["sdxl"]), str(mid), "--to", "diffusers"]) == 0
    capsys.readouterr()
    assert main(["inspect", str(exported["sdxl"]), "--json"]) == 0
    community = json.loads(capsys.readouterr().out)
    assert main(["inspect", str(mid), "--json"]) == 0
    diffusers = json.loads(capsys.readouterr().out)
    assert diffusers["format"] == "diffusers" and diffusers["family"] == "sdxl"
    assert diffusers["modules"] == community["modules"]
    assert diffusers["rank_alpha"] == community["rank_alpha"]


def test_convert_needs_a_family_when_the_file_does_not_say(tmp_path, capsys):
    from safetensors.torch import save_file

    src = tmp_path / "plain.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight": torch.zeros(2, 8),
               "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight": torch.zeros(8, 2)},
              str(src))
    assert main(["convert", str(src), str(tmp_path / "o.safetensors"), "--to", "diffusers"]) == 2
    assert "--family" in capsys.readouterr().err
    assert main(["convert", str(src), str(tmp_path / "o.safetensors"), "--to", "diffusers", "--family", "sd1"]) == 0


def test_loha_cannot_be_written_as_diffusers(tmp_path, capsys):
    pipe = build_tiny_pipeline("sd1", seed=0)
    comps = add_adapters(pipe, "loha", preset="attn", text_encoders=False)
    src = tmp_path / "loha.safetensors"
    save_adapter(src, comps, "sd1", unet_config=dict(pipe.unet.config), save_precision=torch.float32)
    assert main(["convert", str(src), str(tmp_path / "o.safetensors"), "--to", "diffusers", "--family", "sd1"]) == 2
    assert "community format" in capsys.readouterr().err
    assert not (tmp_path / "o.safetensors").exists()
