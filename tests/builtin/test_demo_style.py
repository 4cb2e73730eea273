"""The demo LoRA learns the style: a shortened `train_configs/demo.toml` run on `builtin:tiny` moves the
ground darkness of generated images from the base's value toward the style set's (near-black grounds),
by at least half the distance at scale 1 and monotonically over LoRA scales 0, 0.5, 1, while the
generated shapes keep the prompt's colour."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from PIL import Image

from sd_lora.config.load import load_config
from sd_lora.models.shapes import style_statistic

REPO = Path(__file__).resolve().parents[2]
STYLE_DIR = REPO / "datasets_example" / "night_shapes"
SHORT_STEPS = 400
SEEDS = (11, 12, 13, 14)


def _demo_grid():
    spec = importlib.util.spec_from_file_location("demo_grid", REPO / "scripts" / "demo_grid.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    from sd_lora.models.load import load_pipeline
    from sd_lora.train.recipe import run_training

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the CI box is shared; one thread avoids oversubscription stalls
    try:
        out = tmp_path_factory.mktemp("demo")
        cfg = load_config(REPO / "train_configs" / "demo.toml",
                          [f"train.max_steps={SHORT_STEPS}", f"output.dir={out}", "output.save_state_at_end=false"])
        result = run_training(cfg)
        pipe, _ = load_pipeline("builtin:tiny")
        demo = _demo_grid()
        images = demo.sweep(pipe, result.adapter_path, seeds=SEEDS, steps=20)
    finally:
        torch.set_num_threads(threads)
    return demo, images


def test_demo_config_uses_the_builtin_base_and_the_committed_style_set():
    cfg = load_config(REPO / "train_configs" / "demo.toml")
    assert cfg.model.pretrained == "builtin:tiny"
    assert Path(cfg.data.dir) == STYLE_DIR
    assert cfg.data.resolution == 32


def test_lora_moves_ground_darkness_toward_the_style_set(sweep):
    _, images = sweep
    base, half, full = (style_statistic(images[s]) for s in (0.0, 0.5, 1.0))
    target = style_statistic(Image.open(f) for f in sorted(STYLE_DIR.glob("*.png")))
    print(f"ground darkness: base {base:.3f}, scale 0.5 {half:.3f}, scale 1 {full:.3f}, style set {target:.3f}")
    assert target > base + 0.3  # the base never draws a dark ground; the style set always does
    assert base < half < full, (base, half, full)
    assert full - base >= 0.5 * (target - base), (base, half, full, target)


def test_styled_images_still_follow_the_prompt_colour(sweep):
    demo, images = sweep
    hits = {scale: demo.colour_hits(ims, demo.PROMPTS, len(SEEDS)) for scale, ims in images.items()}
    print(f"prompt colour followed: {hits}")
    assert hits[0.5] >= 0.8 and hits[1.0] >= 0.7, hits
