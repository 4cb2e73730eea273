"""PNG parameters, grids and the `sd-lora generate` command end to end (tiny SD1 / SDXL, CPU)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sd_lora.cli.main import main
from sd_lora.inference import make_grid, read_parameters


def cli(tmp_path, model, *extra):
    out = tmp_path / "out"
    code = main(["generate", "--model", str(model), "--steps", "2", "--width", "32", "--height", "32",
                 "--scheduler", "Euler", "--out", str(out), *extra])
    return code, out


def test_grid_places_every_image_and_keeps_its_labels():
    images = [Image.new("RGB", (32, 24), (10 * i, 0, 0)) for i in range(5)]
    grid = make_grid(images, labels=[f"image {i}" for i in range(5)], cols=3)
    layout = json.loads(grid.info["grid"])
    assert (layout["rows"], layout["cols"]) == (2, 3) and layout["labels"][4] == "image 4"
    assert grid.width >= 3 * 32 and grid.height >= 2 * 24
    for im, box in zip(images, layout["boxes"]):
        assert np.array_equal(np.asarray(grid.crop(box)), np.asarray(im))
    below = grid.crop((box[0], box[3], box[2], grid.height))
    assert np.asarray(below).min() < 128  # caption text drawn under the last image


def test_generate_writes_pngs_with_parameters_sidecars_and_a_grid(tmp_path, tiny_sd1_dir, sd1_loras):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(json.dumps({"prompt": "a cat <lora:style:0.7>", "seed": 11, "negative_prompt": "blur"}) + "\n"
                       + json.dumps({"prompt": "a dog", "loras": ["other:0.5"], "guidance": 3}) + "\n")
    code, out = cli(tmp_path, tiny_sd1_dir, "--prompt-file", str(prompts), "--lora-dir",
                    str(sd1_loras["style"].parent), "--seed", "4-5", "--batch-size", "3", "--clip-skip", "2")
    assert code == 0
    pngs = sorted(out.glob("0*.png"))
    assert len(pngs) == 3  # line 1 has its own seed; line 2 uses both seeds of --seed
    text = read_parameters(pngs[0])
    prompt, negative, settings = text.split("\n")
    assert prompt == "a cat <lora:style:0.7>" and negative == "Negative prompt: blur"
    for part in ("Steps: 2", "Sampler: Euler", "CFG scale: 7", "Seed: 11", "Size: 32x32", "Clip skip: 2",
                 'Lora hashes: "style: '):
        assert part in settings
    sidecar = json.loads(pngs[0].with_suffix(".json").read_text())
    assert sidecar["seed"] == 11 and sidecar["loras"][0]["weight"] == 0.7 and sidecar["prompt"] == "a cat"
    assert [json.loads(p.with_suffix(".json").read_text())["seed"] for p in pngs[1:]] == [4, 5]
    assert "Seed: 5" in read_parameters(pngs[2]) and "CFG scale: 3" in read_parameters(pngs[2])
    assert len(list(out.glob("grid-*.png"))) == 1


def test_sweep_grid_has_adapters_times_scales_with_labels(tmp_path, tiny_sd1_dir, sd1_loras):
    code, out = cli(tmp_path, tiny_sd1_dir, "--prompt", "a cat", "--seed", "7", "--lora", str(sd1_loras["style"]),
                    "--lora", str(sd1_loras["third"]), "--sweep", "--sweep-scales", "0,0.5,1", "--batch-size", "3")
    assert code == 0
    (sweep,) = out.glob("sweep-*.png")
    with Image.open(sweep) as grid:
        layout = json.loads(grid.text["sd-lora-grid"])
        pixels = np.asarray(grid.convert("RGB"))
    assert (layout["rows"], layout["cols"]) == (2, 3)
    assert layout["col_labels"] == ["0", "0.5", "1"]
    assert layout["row_labels"] == [str(sd1_loras["style"]), str(sd1_loras["third"])]
    cells = [pixels[y0:y1, x0:x1] for x0, y0, x1, y1 in layout["boxes"]]
    assert all(c.shape == (32, 32, 3) for c in cells)
    assert np.array_equal(cells[0], cells[3])  # scale 0 is the base image for both adapters (same seed)
    assert not np.array_equal(cells[0], cells[2])
    assert len(list(out.glob("0*.png"))) == 6


@pytest.mark.parametrize("args, message", [
    (["--scheduler", "Euler z"], "unknown"),
    (["--width", "36"], "multiple of 8"),
    (["--lora", "missing.safetensors"], "not found"),
])
def test_user_errors_exit_2_before_generating(tmp_path, tiny_sd1_dir, capsys, args, message):
    code, out = cli(tmp_path, tiny_sd1_dir, "--prompt", "a cat", *args)
    assert code == 2 and message in capsys.readouterr().err
    assert not out.exists()


def test_lora_for_another_family_is_refused(tmp_path, tiny_sd1_dir, sdxl_lora, capsys):
    code, out = cli(tmp_path, tiny_sd1_dir, "--prompt", "a cat", "--lora", f"{sdxl_lora}:0.5")
    assert code == 2 and str(sdxl_lora) in capsys.readouterr().err
    assert not out.exists()


def test_sdxl_generates_with_a_lora_and_fuse(tmp_path, tiny_sdxl_dir, sdxl_lora):
    code, out = cli(tmp_path, tiny_sdxl_dir, "--prompt", "a cat", "--seed", "1", "--lora", f"{sdxl_lora}:0.5",
                    "--fuse")
    assert code == 0
    (png,) = out.glob("0*.png")
    assert 'Fused LoRAs: "xl: 0.5"' in read_parameters(png)
