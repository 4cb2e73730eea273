"""Adapter files for `sd-lora inspect` / `convert`: damaged files (NaN values, ranks that disagree), foreign
files and bad output paths are one clear error, and an existing output is never replaced by a failed run.
DoRA files say that AUTOMATIC1111 computes them wrongly."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file, save_file

from tests.reliability.conftest import assert_ok, assert_unchanged, assert_user_error, run_cli, snapshot


@pytest.fixture
def damaged(tmp_path, adapter_files):
    """damaged(kind) -> a copy of the SD1 LoRA with one NaN, or one down weight cut to another rank."""
    def make(kind):
        state = load_file(str(adapter_files["sd1"]))
        key = next(k for k in sorted(state) if k.endswith("attn2_to_v.lora_up.weight"))
        if kind == "nan":
            state[key] = state[key].clone()
            state[key][0, 0] = float("nan")
        else:
            down = key.replace("lora_up", "lora_down")
            state[down] = state[down][:2].clone()
        path = tmp_path / f"{kind}.safetensors"
        save_file(state, str(path))
        return path
    return make


def test_inspect_of_a_file_with_nan_names_the_tensor(tmp_path, damaged):
    result = run_cli("inspect", damaged("nan"), cwd=tmp_path)
    assert_user_error(result, "inspect", "1 tensor(s) hold NaN or inf values", "attn2_to_v.lora_up.weight",
                      "attn2.to_v", "re-export it")


def test_convert_of_a_file_with_nan_is_refused_and_the_old_output_kept(tmp_path, damaged):
    bad = damaged("nan")
    (tmp_path / "out.safetensors").write_bytes(b"a good earlier conversion")
    before = snapshot(tmp_path)
    result = run_cli("convert", bad.name, "out.safetensors", "--to", "diffusers", cwd=tmp_path)
    assert_user_error(result, "convert", "hold NaN or inf values")
    assert_unchanged(before, tmp_path)


def test_inspect_of_ranks_that_disagree_names_the_module(tmp_path, damaged):
    result = run_cli("inspect", damaged("rank"), cwd=tmp_path)
    assert_user_error(result, "inspect", "attn2_to_v: down (lora_A) [2,", "disagree on the rank")


def test_convert_of_ranks_that_disagree_is_refused(tmp_path, damaged):
    path = damaged("rank")
    before = snapshot(tmp_path)
    result = run_cli("convert", path, tmp_path / "x.safetensors", "--to", "diffusers", cwd=tmp_path)
    assert_user_error(result, "convert", "disagree on the rank")
    assert_unchanged(before, tmp_path)


def test_convert_onto_a_folder_is_refused_and_the_folder_untouched(tmp_path, adapter_files):
    folder = tmp_path / "loras"
    folder.mkdir()
    (folder / "keep.safetensors").write_bytes(b"keep")
    before = snapshot(folder)
    result = run_cli("convert", adapter_files["sd1"], folder, "--to", "diffusers", cwd=tmp_path)
    assert_user_error(result, "convert", f"output {folder} is a folder", "give the path of the file")
    assert_unchanged(before, folder)


def test_convert_into_a_missing_folder_is_refused(tmp_path, adapter_files):
    result = run_cli("convert", adapter_files["sd1"], tmp_path / "no" / "x.safetensors", "--to", "diffusers",
                     cwd=tmp_path)
    assert_user_error(result, "convert", "does not exist; create it first")


def test_good_convert_round_trip_still_works(tmp_path, adapter_files):
    assert_ok(run_cli("convert", adapter_files["sd1"], "d.safetensors", "--to", "diffusers", cwd=tmp_path))
    assert_ok(run_cli("convert", "d.safetensors", "c.safetensors", "--to", "community", cwd=tmp_path))
    original, back = load_file(str(adapter_files["sd1"])), load_file(str(tmp_path / "c.safetensors"))
    assert set(original) == set(back) and all(original[k].equal(back[k]) for k in original)


def test_inspect_of_a_non_adapter_file_is_a_clear_error(tmp_path):
    import torch

    save_file({"model.diffusion_model.x.weight": torch.zeros(2)}, str(tmp_path / "model.safetensors"))
    assert_user_error(run_cli("inspect", "model.safetensors", cwd=tmp_path), "inspect", "not a LoRA file")


def test_inspect_of_a_missing_file_is_a_clear_error(tmp_path):
    result = run_cli("inspect", "nothing.safetensors", cwd=tmp_path)
    assert_user_error(result, "inspect", "nothing.safetensors")


def test_inspect_of_a_dora_file_notes_automatic1111(tmp_path, adapter_files):
    text = run_cli("inspect", adapter_files["dora"], cwd=tmp_path)
    assert_ok(text)
    assert "adapter type:  dora" in text.stdout
    assert "note:" in text.stdout and "AUTOMATIC1111" in text.stdout and "wrong weights" in text.stdout
    as_json = run_cli("inspect", adapter_files["dora"], "--json", cwd=tmp_path)
    assert_ok(as_json)
    (note,) = json.loads(as_json.stdout)["notes"]
    assert "AUTOMATIC1111" in note and "[1, in]" in note
    plain = run_cli("inspect", adapter_files["sd1"], "--json", cwd=tmp_path)
    assert json.loads(plain.stdout)["notes"] == []


def test_saving_dora_in_the_community_format_prints_the_note(tmp_path, capsys):
    import torch

    from sd_lora.adapters import adapter_spec, build_peft_config, inject
    from sd_lora.config.schema import NetworkConfig
    from sd_lora.formats.export import save_adapter
    from sd_lora.models.tiny import build_tiny_pipeline

    lines = {}
    for dora in (True, False):
        pipe = build_tiny_pipeline("sd1", seed=0)
        net = NetworkConfig(rank=2, alpha=2, dora=dora)
        inject(pipe.unet, build_peft_config("lora", adapter_spec(net, pipe.unet, "unet")), adapter_name="default")
        capsys.readouterr()
        save_adapter(tmp_path / f"{dora}.safetensors", {"unet": pipe.unet}, "sd1", unet_config=dict(pipe.unet.config))
        lines[dora] = [ln for ln in capsys.readouterr().out.splitlines() if "AUTOMATIC1111" in ln]
    assert len(lines[True]) == 1 and lines[True][0].startswith("note: True.safetensors: DoRA file")
    assert lines[False] == []
