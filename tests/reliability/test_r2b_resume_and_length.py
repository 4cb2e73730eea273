"""Round 2 (B): exact resume with every random feature on, from any step of whole epochs; one run-length formula.

Each case runs the real CLI in a subprocess on `builtin:tiny` (32 px, rank 2).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sd_lora.data.plan import run_length
from tests.reliability.conftest import assert_ok, run_cli, write_image

# Every random stream a step consumes: adapter dropout (peft's, rank and module dropout, in the UNet and the text
# encoder), data order, flips, random crops, caption shuffling and dropout, noise offset, pyramid noise, input
# perturbation, timesteps.
RANDOM = ["network.dropout=0.3", "network.rank_dropout=0.3", "network.module_dropout=0.2",
          "network.train_text_encoder=true", "data.flip_aug=true", "data.random_crop=true", "data.cache_latents=false",
          "data.shuffle_caption=true", "data.caption_dropout_rate=0.2", "data.caption_tag_dropout_rate=0.2",
          "train.noise_offset=0.1", "train.multires_noise_iterations=2", "train.ip_noise_gamma=0.1"]


def train_args(data: Path, out: Path, *settings: str) -> list[str]:
    args = ["train", "--set", f"data.dir={data}", "--set", "data.resolution=32", "--set", f"output.dir={out}",
            "--set", "output.log_with=none", "--set", "network.rank=2", "--set", "train.batch_size=1",
            "--set", "train.log_every_n_steps=1"]
    for s in settings:
        args += ["--set", s]
    return args


def same_tensors(a: Path, b: Path) -> list[str]:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert ta.keys() == tb.keys()
    return [k for k in ta if not torch.equal(ta[k], tb[k])]


@pytest.fixture(scope="module")
def five_images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("r2b_resume") / "data"
    for i in range(5):
        write_image(folder / f"{i}.png", size=(40, 48), colour=(50 * i, 40, 200 - 30 * i),
                    caption=f"shape {i}, red, blue, tag{i}")
    return folder


# 5 batches per epoch, accumulation 2: windows of 2, 2, 1 micro-batches = 3 optimiser steps per epoch.
@pytest.fixture(scope="module")
def reference(five_images):
    out = five_images.parent / "reference"
    assert_ok(run_cli(*train_args(five_images, out, *RANDOM, "train.gradient_accumulation_steps=2",
                                  "train.max_epochs=3", "output.save_every_n_steps=1", "output.save_last_n=0"),
                      cwd=five_images.parent, timeout=300))
    return out


@pytest.mark.parametrize("step", range(1, 9))
def test_resume_from_any_step_with_every_random_feature_is_bit_exact(five_images, reference, step):
    """Steps 1, 2, 4, 5, 7, 8 are mid-epoch (3 and 6 end one); the resumed run must finish with the same adapter."""
    out = five_images.parent / f"resumed-{step}"
    state = reference / "checkpoints" / f"step-{step:06d}"
    result = run_cli(*train_args(five_images, out, *RANDOM, "train.gradient_accumulation_steps=2",
                                 "train.max_epochs=3", f"train.resume={state}"), cwd=five_images.parent, timeout=300)
    assert_ok(result)
    assert f"resumed from {state} at step {step}" in result.stdout
    assert same_tensors(reference / "lora.safetensors", out / "lora.safetensors") == []


@pytest.mark.parametrize("batches, accumulation, max_steps, max_epochs, expected", [
    (5, 2, None, 3, (3, 9, 3)),   # windows 2+2+1 per epoch
    (5, 2, 7, None, (3, 7, 3)),   # 7 steps need 3 epochs of 3 (the third cut short)
    (4, 2, None, 2, (2, 4, 2)),   # accumulation divides the epoch
    (1, 4, None, 5, (1, 5, 5)),   # accumulation larger than the epoch: one short window per epoch
    (7, 3, 10, None, (3, 10, 4)),  # 3+3+1 per epoch; 10 steps = 3 whole epochs and one step
])
def test_run_length_with_uneven_batches_matches_a_hand_count(batches, accumulation, max_steps, max_epochs, expected):
    assert run_length(batches, accumulation, max_steps, max_epochs) == expected


def test_plan_and_training_agree_on_the_run_length(five_images):
    """5 batches per epoch, accumulation 2, max_epochs 3: the plan says 9 steps and the run trains exactly 9
    optimiser steps over exactly 3 epochs (15 micro-batches)."""
    out = five_images.parent / "length"
    result = run_cli(*train_args(five_images, out, "train.gradient_accumulation_steps=2", "train.max_epochs=3",
                                 "output.save_state_at_end=true"), cwd=five_images.parent, timeout=300)
    assert_ok(result)
    assert "batches per epoch (per process): 5 = 3 optimiser steps (the last of 1 batch)" in result.stdout
    assert "training length: 9 steps = 3 epoch(s)" in result.stdout
    steps = [json.loads(line)["step"] for line in (out / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 10))
    state = torch.load(out / "checkpoints" / "step-000009" / "custom_checkpoint_0.pkl", weights_only=False)
    assert (state["global_step"], state["epoch"], state["batch_in_epoch"]) == (9, 3, 0)


def test_a_short_last_window_weighs_as_much_as_a_full_one(tmp_path):
    """One image, accumulation 2: every window holds one micro-batch, so the run must equal accumulation 1."""
    write_image(tmp_path / "data" / "0.png", caption="a red square")
    for accumulation in (1, 2):
        assert_ok(run_cli(*train_args(tmp_path / "data", tmp_path / f"acc{accumulation}", "train.max_epochs=3",
                                      f"train.gradient_accumulation_steps={accumulation}"), cwd=tmp_path))
    assert same_tensors(tmp_path / "acc1" / "lora.safetensors", tmp_path / "acc2" / "lora.safetensors") == []
