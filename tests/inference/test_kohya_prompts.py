"""kohya's sample-prompt options (--n --w --h --d --s --l --ss) in prompt files, generate and training samples."""

from __future__ import annotations

import json

import pytest
from PIL import Image

from sd_lora.cli.main import main
from sd_lora.config.load import ConfigError, config_from_dict
from sd_lora.errors import SdLoraError
from sd_lora.inference.prompts import PromptSpec, one_scheduler, prompt_spec, read_prompt_file


def test_every_kohya_option_sets_its_field():
    spec = prompt_spec("masterpiece, 1girl --n low quality, blurry --w 768 --h 512 --d 42 --s 28 --l 7.5 --ss k_euler_a")
    assert spec == PromptSpec("masterpiece, 1girl", negative_prompt="low quality, blurry", seed=42, steps=28,
                              guidance=7.5, width=768, height=512, scheduler="Euler a")
    assert prompt_spec("a cat --D 3 --SS ddim") == PromptSpec("a cat", seed=3, scheduler="DDIM")  # kohya ignores case
    assert prompt_spec("a cat, -- not an option") == PromptSpec("a cat, -- not an option")


@pytest.mark.parametrize("line, message", [
    ("a cat --ar 16:9", "unknown option --ar; kohya's prompt options are --n (negative prompt)"),
    ("a cat --w 500", "--w 500 is not a positive multiple of 8"),
    ("a cat --d x", "--d 'x' is not a whole number"),
    ("a cat --s 0", "--s 0: steps must be 1 to 1000"),
    ("a cat --l 7 --l 8", "--l is given twice"),
    ("a cat --n", "--n needs a value"),
    ("a cat --ss k_lms", "sampler 'k_lms' is not available in sd-lora"),
    ("a cat --ss foo", "kohya has no sampler 'foo'"),
])
def test_bad_options_are_errors_not_prompt_text(line, message):
    with pytest.raises(SdLoraError) as e:
        prompt_spec(line)
    assert message in str(e.value)


def test_prompt_file_lines_and_one_sampler_per_run(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# kohya prompts\na cat --d 1 --ss euler\n\na dog --n blur --ss k_euler\n")
    specs = read_prompt_file(path)
    assert [(s.prompt, s.seed, s.negative_prompt, s.scheduler) for s in specs] == \
        [("a cat", 1, None, "Euler"), ("a dog", None, "blur", "Euler")]
    assert one_scheduler(specs, "DDIM") == "Euler" and one_scheduler([PromptSpec("x")], "DDIM") == "DDIM"
    path.write_text("a cat --ss euler\na dog --ss ddim\n")
    with pytest.raises(SdLoraError, match="different samplers \\(DDIM, Euler\\)"):
        one_scheduler(read_prompt_file(path), "Euler a")
    path.write_text("a cat --x 1\n")
    with pytest.raises(SdLoraError, match=r"prompts.txt:1 'a cat --x 1': unknown option --x"):
        read_prompt_file(path)


def test_sample_prompts_are_checked_with_the_config():
    with pytest.raises(ConfigError, match=r"sample.prompts\[1\] 'b --w 7': --w 7 is not a positive multiple of 8"):
        config_from_dict({"sample": {"prompts": ["a --w 64", "b --w 7"]}})


def test_generate_honours_the_options(tmp_path, tiny_sd1_dir):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red cat --n blurry --w 64 --h 32 --d 7 --s 2 --l 3.5 --ss euler\n")
    out = tmp_path / "out"
    assert main(["generate", "--model", str(tiny_sd1_dir), "--prompt-file", str(prompts), "--steps", "3",
                 "--width", "32", "--height", "32", "--out", str(out)]) == 0
    (png,) = sorted(out.glob("*.png"))
    with Image.open(png) as im:
        size, params = im.size, im.text["parameters"]
    assert size == (64, 32)
    assert params.startswith("a red cat\nNegative prompt: blurry\n")
    for field in ("Steps: 2", "Sampler: Euler,", "CFG scale: 3.5", "Seed: 7"):
        assert field in params, (field, params)


def test_training_samples_use_each_prompts_options(tiny_sd1_dir, tmp_path):
    from sd_lora.train.recipe import run_training
    from tests.train.conftest import tiny_config, write_dataset

    data = write_dataset(tmp_path / "data", n=2)
    cfg = tiny_config(tiny_sd1_dir, data, tmp_path / "out", train={"max_steps": 1},
                      sample={"every_n_steps": 1, "steps": 2, "seed": 5, "scheduler": "Euler a",
                              "prompts": ["a red square --w 64 --h 32 --d 99 --ss ddim --n green",
                                          "a blue square"]})
    run_training(cfg)
    folder = tmp_path / "out" / "samples" / "step-000001"
    records = []
    for png in sorted(folder.glob("*.png")):
        with Image.open(png) as im:
            records.append((im.size, json.loads(im.text["sd-lora-recipe"])))
    (size0, r0), (size1, r1) = records
    assert size0 == (64, 32) and (r0["seed"], r0["sampler"], r0["negative_prompt"], r0["prompt"]) == \
        (99, "DDIM", "green", "a red square")
    assert size1 == (32, 32) and (r1["seed"], r1["sampler"], r1["negative_prompt"]) == (6, "Euler a", "")
