"""Round 2 (B): inputs that were accepted and misused without a word, malformed files, and errors that blamed
the wrong thing. CLI cases call the CLI's `main()` in-process (`run_main`: they are about messages, not the
process), except `~`, which needs its own HOME; caption decoding, prompt-file parsing and
the NaN image use the Python API, where that is the point."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from tests.reliability.conftest import assert_ok, assert_user_error, cli_env, run_main, write_image

# ---------------------------------------------------------------- class 6: inputs accepted and misused


def dry_run(folder, cwd):
    return run_main("train", "--set", f"data.dir={folder}", "--set", "data.resolution=32", "--dry-run", cwd=cwd)


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be", "utf-32"])
def test_caption_with_a_utf16_or_utf32_byte_order_mark_is_decoded(tmp_path, encoding):
    import codecs

    from sd_lora.config.data import DataConfig
    from sd_lora.data import scan_dataset

    bom = {"utf-16-le": codecs.BOM_UTF16_LE, "utf-16-be": codecs.BOM_UTF16_BE, "utf-32": b""}[encoding]
    write_image(tmp_path / "data" / "a.png", caption=bom + "café crème, 猫".encode(encoding))
    scan = scan_dataset(DataConfig(dir=str(tmp_path / "data"), resolution=32))
    (record,) = scan.subsets[0].records
    assert record.caption == "café crème, 猫"
    assert not scan.warnings  # decoded, not read as Windows-1252 mojibake


def test_gif_tiff_and_animated_images_are_named_as_skipped(tmp_path):
    folder = tmp_path / "data"
    write_image(folder / "good.png")
    Image.new("RGB", (32, 32), (1, 2, 3)).save(folder / "still.gif")
    Image.new("RGB", (32, 32), (1, 2, 3)).save(folder / "scan.tiff")
    frames = [Image.new("RGB", (32, 32), (i * 80, 0, 0)) for i in range(3)]
    frames[0].save(folder / "moving.gif", save_all=True, append_images=frames[1:])
    result = dry_run(folder, tmp_path)
    assert_ok(result)
    for name, kind in (("still.gif", "GIF"), ("scan.tiff", "TIFF"), ("moving.gif", "GIF")):
        assert f"{folder / name}: {kind} images are not read" in result.stdout, result.stdout
    assert "convert it to PNG" in result.stdout
    assert "training images: 1, regularisation images: 0, skipped files: 3" in result.stdout


def test_image_without_caption_is_named_in_the_plan(tmp_path):
    folder = tmp_path / "data"
    write_image(folder / "with.png")
    write_image(folder / "bare_one.png", caption=None)
    result = dry_run(folder, tmp_path)
    assert_ok(result)
    assert "have no caption" in result.stdout and "bare_one.png" in result.stdout


def test_kohya_options_of_a_prompt_file_line_are_used_not_left_in_the_prompt(tmp_path):
    from sd_lora.inference.prompts import read_prompt_file

    path = tmp_path / "prompts.txt"
    path.write_text("a red square --n blurry, dark --d 7 --s 3 --l 5.5 --w 48 --h 40\nplain prompt\n")
    first, second = read_prompt_file(path)
    assert (first.prompt, first.negative_prompt, first.seed, first.steps, first.guidance, first.width,
            first.height) == ("a red square", "blurry, dark", 7, 3, 5.5, 48, 40)
    assert (second.prompt, second.seed, second.steps) == ("plain prompt", None, None)


def test_a_prompt_file_line_with_its_own_seed_and_steps_generates_with_them(tmp_path):
    (tmp_path / "p.txt").write_text("a red square --d 7 --s 2\n")
    result = run_main("generate", "--prompt-file", "p.txt", "--seed", "1", "--steps", "4", "--width", "32",
                     "--height", "32", "--out", "imgs", cwd=tmp_path)
    assert_ok(result)
    (image,) = sorted((tmp_path / "imgs").glob("*.png"))
    params = Image.open(image).text["parameters"]
    assert params.startswith("a red square\n") and "Steps: 2," in params and "Seed: 7," in params, params


def test_unknown_prompt_file_option_is_an_error_naming_the_line(tmp_path):
    (tmp_path / "p.txt").write_text("fine\na cat --x 3\n")
    result = run_main("generate", "--prompt-file", "p.txt", "--out", "imgs", cwd=tmp_path)
    assert_user_error(result, "generate", "p.txt:2", "unknown option --x")
    assert not (tmp_path / "imgs").exists()


def home_env(tmp_path: Path) -> dict:
    env = cli_env(tmp_path)
    env["HOME"] = str(tmp_path / "home")
    return env


def test_tilde_in_config_and_argument_paths_means_the_home_folder(tmp_path, adapter_files):
    home = tmp_path / "home"
    write_image(home / "pics" / "a.png")
    (home / "loras").mkdir()
    (home / "loras" / "x.safetensors").write_bytes(adapter_files["sd1"].read_bytes())
    work = tmp_path / "work"
    work.mkdir()
    base = [sys.executable, "-m", "sd_lora"]
    dry = subprocess.run(base + ["train", "--set", "data.dir=~/pics", "--set", "data.resolution=32", "--dry-run"],
                         cwd=work, env=home_env(tmp_path), capture_output=True, text=True, timeout=120)
    assert_ok(dry)
    assert "training images: 1" in dry.stdout
    inspect = subprocess.run(base + ["inspect", "~/loras/x.safetensors"], cwd=work, env=home_env(tmp_path),
                             capture_output=True, text=True, timeout=120)
    assert_ok(inspect)
    assert not (work / "~").exists()


def test_a_generation_that_comes_out_nan_is_an_error_not_a_black_image(tmp_path):
    from sd_lora.errors import SdLoraError
    from sd_lora.inference import GenerationRequest, generate_images, load_generation_pipeline

    pipe, _ = load_generation_pipeline("builtin:tiny", device="cpu", dtype="fp32")
    with torch.no_grad():
        pipe.unet.conv_out.bias.fill_(float("nan"))
    with pytest.raises(SdLoraError, match=r"seed 3.*came out as NaN"):
        generate_images(pipe, [GenerationRequest(prompt="a cat", seed=3, steps=2, width=32, height=32)],
                        progress=False)


# ---------------------------------------------------------------- class 8: malformed inputs


def raw_safetensors(path: Path, header: dict, data: bytes) -> Path:
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    return path


_T = {"dtype": "F32", "shape": [2, 4], "data_offsets": [0, 32]}


@pytest.mark.parametrize("header, needle", [
    ({"lora_unet_x.lora_down.weight": {**_T, "shape": [-2, 4]}}, "malformed"),
    ({"lora_unet_x.lora_down.weight": {**_T, "shape": [2000000, 4000000]}}, "the header is forged or damaged"),
    ({"lora_unet_x.lora_down.weight": {**_T, "shape": [2.5, 4]}}, "malformed"),
    ({"__metadata__": ["a"], "lora_unet_x.lora_down.weight": _T}, "__metadata__ is list"),
    ({"__metadata__": {"a": 1}, "lora_unet_x.lora_down.weight": _T}, "__metadata__ is dict, not a table of text"),
], ids=["negative-shape", "forged-shape", "float-shape", "metadata-list", "metadata-number"])
def test_malformed_safetensors_headers_are_one_clear_error(tmp_path, header, needle):
    raw_safetensors(tmp_path / "bad.safetensors", header, bytes(32))
    assert_user_error(run_main("inspect", "bad.safetensors", cwd=tmp_path), "inspect", "bad.safetensors", needle)


def lora_with_metadata(path: Path, metadata: dict) -> Path:
    down = "lora_unet_down_blocks_0_attentions_0_proj_in"
    save_file({f"{down}.lora_down.weight": torch.zeros(2, 32), f"{down}.lora_up.weight": torch.zeros(32, 2),
               f"{down}.alpha": torch.tensor(2.0)}, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize("metadata, needle", [
    ({"sd_lora.samples": "[" * 100000 + "]" * 100000}, "nested too deeply"),
    ({"sd_lora.samples": "{\"a\": 1}"}, "expected a list of JSON, found dict"),
    ({"sd_lora.samples": "[1, 2]"}, "holds int entries"),
], ids=["deep", "wrong-container", "wrong-entries"])
def test_malformed_sample_records_are_one_clear_error(tmp_path, metadata, needle):
    lora_with_metadata(tmp_path / "x.safetensors", metadata)
    result = run_main("generate", "--recipe", "x.safetensors", "--out", "imgs", cwd=tmp_path)
    assert_user_error(result, "generate", "--recipe x.safetensors", "'sd_lora.samples'", needle)


@pytest.mark.parametrize("metadata, needle", [
    ({"ss_clip_skip": "nan"}, "'ss_clip_skip' is 'nan'"),
    ({"ss_clip_skip": "-3"}, "from 1 to 12"),
    ({"sd_lora.inference_recipe": "{\"guidance_rescale\": 1e999}"}, "guidance_rescale is 'inf'"),
    ({"sd_lora.inference_recipe": "[" * 100000 + "]" * 100000}, "nested too deeply"),
], ids=["nan-clip-skip", "negative-clip-skip", "inf-rescale", "deep-recipe"])
def test_bad_numbers_in_a_lora_s_metadata_are_one_error_naming_lora(tmp_path, metadata, needle):
    lora_with_metadata(tmp_path / "x.safetensors", metadata)
    result = run_main("generate", "--lora", "x.safetensors", "--prompt", "a", "--out", "imgs", cwd=tmp_path)
    message = assert_user_error(result, "generate", "--lora x.safetensors", needle)
    assert "--recipe" not in message
    assert not (tmp_path / "imgs").exists()


def test_a_table_where_a_number_belongs_is_a_clear_config_error(tmp_path):
    (tmp_path / "c.toml").write_text("[train]\nlearning_rate = { value = 1 }\n")
    result = run_main("train", "--config", "c.toml", "--validate", cwd=tmp_path)
    assert_user_error(result, "train", "train.learning_rate: expected number, got {'value': 1} (dict)")


# ---------------------------------------------------------------- class 9: errors that blame the wrong thing


def test_a_broken_lora_file_is_blamed_on_lora_not_recipe(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"not a safetensors file at all")
    result = run_main("generate", "--lora", "x.safetensors", "--prompt", "a", "--out", "imgs", cwd=tmp_path)
    message = assert_user_error(result, "generate", "x.safetensors")
    assert "--recipe" not in message


def test_a_bad_override_is_blamed_on_set_not_the_config_file(tmp_path):
    (tmp_path / "c.toml").write_text("[train]\nmax_steps = 10\n")
    result = run_main("train", "--config", "c.toml", "--set", "train.learning_rate=nan", "--validate", cwd=tmp_path)
    message = assert_user_error(result, "train", "the command-line overrides (--set), not the config file",
                                "train.learning_rate", "(given with --set)")
    assert "in c.toml" not in message


def test_a_bad_value_in_the_file_is_still_blamed_on_the_file_beside_a_good_override(tmp_path):
    (tmp_path / "c.toml").write_text("[train]\nmax_steps = \"ten\"\n")
    result = run_main("train", "--config", "c.toml", "--set", "train.learning_rate=0.001", "--validate", cwd=tmp_path)
    message = assert_user_error(result, "train", "in c.toml", "train.max_steps")
    assert "(given with --set)" not in message


@pytest.mark.parametrize("name, text, kind", [("c.json", '{"train": {"max_steps": 3}}', "JSON"),
                                              ("c.yaml", "train:\n  max_steps: 3\n", "YAML")])
def test_a_config_that_is_not_toml_says_a_config_must_be_toml(tmp_path, name, text, kind):
    (tmp_path / name).write_text(text)
    result = run_main("train", "--config", name, "--validate", cwd=tmp_path)
    assert_user_error(result, "train", f"not valid TOML (it looks like {kind})", "a config must be a TOML file")


def test_only_regularisation_subsets_names_no_folder_called_none(tmp_path):
    write_image(tmp_path / "reg" / "r.png")
    (tmp_path / "c.toml").write_text(f"[data]\nresolution = 32\n[[data.subsets]]\ndir = '{tmp_path / 'reg'}'\n"
                                     "is_reg = true\n")
    result = run_main("train", "--config", "c.toml", "--dry-run", cwd=tmp_path)
    message = assert_user_error(result, "train", "every data subset is a regularisation set", "data.dir")
    assert "(none)" not in message
