"""Training samples are reproducible anywhere (issue 15 items 9 and 10): per-sample PNGs with their recipe,
the recipe in the adapter, `generate --recipe` bit-exact, zero-terminal SNR in samples and generate."""

import json

import numpy as np
from PIL import Image
from safetensors import safe_open

from sd_lora.cli.main import main
from tests.train.conftest import tiny_config, write_dataset


def _train(tiny_dir, tmp_path, **train):
    from sd_lora.train.recipe import run_training

    data = write_dataset(tmp_path / "data", n=2)
    cfg = tiny_config(tiny_dir, data, tmp_path / "out", train={"max_steps": 2, **train},
                      sample={"every_n_steps": 1, "prompts": ["a red square", "a blue square"], "steps": 3,
                              "seed": 5, "negative_prompt": "green"})
    return run_training(cfg)


def test_samples_record_their_recipe_and_regenerate_bit_exact(tiny_sd1_dir, tmp_path):
    result = _train(tiny_sd1_dir, tmp_path, clip_skip=2)
    out = tmp_path / "out"
    final = out / "samples" / "step-000002"
    pngs = sorted(final.glob("*.png"))
    assert [p.name for p in pngs] == ["00.png", "01.png"]
    assert (out / "samples" / "step-000001" / "00.png").is_file()
    with Image.open(pngs[1]) as im:
        params, record = im.text["parameters"], json.loads(im.text["sd-lora-recipe"])
    assert params.startswith("a blue square\nNegative prompt: green\n")
    for field in ("Steps: 3", "Seed: 6", "Clip skip: 2", "Model hash: ", "Lora: tiny.safetensors", "Lora step: 2"):
        assert field in params
    assert record["seed"] == 6 and record["clip_skip"] == 2 and record["adapter"] == "tiny.safetensors"
    with safe_open(str(result.adapter_path), "pt") as f:
        recorded = json.loads(f.metadata()["sd_lora.samples"])
    assert [r["prompt"] for r in recorded] == ["a red square", "a blue square"]
    assert recorded[1] == record

    assert main(["generate", "--recipe", str(result.adapter_path), "--out", str(tmp_path / "all")]) == 0
    assert main(["generate", "--recipe", str(pngs[1]), "--out", str(tmp_path / "one")]) == 0
    again = sorted((tmp_path / "all").glob("*.png"))
    one = sorted((tmp_path / "one").glob("*.png"))
    assert len(again) == 2 and len(one) == 1
    for original, made in ((pngs[0], again[0]), (pngs[1], again[1]), (pngs[1], one[0])):
        assert np.array_equal(np.asarray(Image.open(original)), np.asarray(Image.open(made)))
    base = tmp_path / "base"
    assert main(["generate", "--model", str(tiny_sd1_dir), "--prompt", "a blue square", "--negative-prompt", "green",
                 "--seed", "6", "--steps", "3", "--width", "32", "--height", "32", "--out", str(base)]) == 0
    assert not np.array_equal(np.asarray(Image.open(next(base.glob("*.png")))), np.asarray(Image.open(one[0])))


def test_zero_terminal_snr_samples_and_generate_defaults(tiny_sd2_dir, tmp_path, capsys):
    from sd_lora.inference import load_generation_pipeline, set_scheduler

    result = _train(tiny_sd2_dir, tmp_path, zero_terminal_snr=True)
    with Image.open(tmp_path / "out" / "samples" / "step-000002" / "00.png") as im:
        params = im.text["parameters"]
    assert "Noise schedule: zero terminal SNR" in params and "CFG Rescale: 0.7" in params
    pipe, _ = load_generation_pipeline(str(tiny_sd2_dir), device="cpu")
    set_scheduler(pipe, "Euler a", zero_terminal_snr=True)
    assert float(pipe.scheduler.alphas_cumprod[-1]) < 1e-6  # zero SNR at the last step (the base's is > 0)
    assert pipe.scheduler.config.timestep_spacing == "trailing"
    gen = tmp_path / "gen"
    assert main(["generate", "--model", str(tiny_sd2_dir), "--lora", str(result.adapter_path), "--prompt", "a",
                 "--seed", "1", "--steps", "2", "--width", "32", "--height", "32", "--out", str(gen)]) == 0
    params = Image.open(next(gen.glob("*.png"))).text["parameters"]
    assert "Noise schedule: zero terminal SNR" in params and "CFG Rescale: 0.7" in params
