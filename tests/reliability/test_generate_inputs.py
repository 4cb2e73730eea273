"""`sd-lora generate` inputs: every bad option, tag, seed, weight or output folder fails with one clear error,
before the model loads where that is possible, and leaves what was written before untouched."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.reliability.conftest import (NO_DAC, assert_ok, assert_unchanged, assert_user_error, cli_env, run_cli,
                                        snapshot)


def generate(tmp_path, *args, prefix=(), out="out"):
    return run_cli("generate", "--model", "builtin:tiny", "--steps", "1", "--out", out, *args, cwd=tmp_path,
                   prefix=prefix)


def refused_early(tmp_path, *args, needles):
    """Refused with one clear message, and before any model loaded or any folder was made."""
    result = generate(tmp_path, *args)
    message = assert_user_error(result, "generate", *needles)
    assert "Loading" not in result.stderr, "the model was loaded before the check"
    assert not (tmp_path / "out").exists()
    return message


@pytest.mark.parametrize("lora", ["style.safetensors:nan", "style.safetensors:inf", "style.safetensors:1000"])
def test_non_finite_or_huge_lora_scale_is_refused(tmp_path, lora):
    refused_early(tmp_path, "--prompt", "a cat", "--lora", lora, needles=["LoRA weight", "is not allowed",
                                                                         "between -100 and 100"])


def test_non_finite_tag_weight_is_refused(tmp_path):
    refused_early(tmp_path, "--prompt", "a cat <lora:style:-inf>", needles=["<lora:style:-inf>", "-inf"])


@pytest.mark.parametrize("prompt, needle", [
    ("a cat <lora:>", "the tag has no LoRA name"),
    ("a cat <lora::0.5>", "the tag has no LoRA name"),
    ("a cat <lora:style:0.5", "the tag '<lora:style:0.5' is not closed"),
    ("a cat <lora:style:heavy>", "'heavy' is not a number"),
    ("a cat <lora:style:1:2:3>", "too many weights"),
])
def test_malformed_tag_is_an_error_not_prompt_text(tmp_path, prompt, needle):
    refused_early(tmp_path, "--prompt", prompt, needles=[needle])


def test_nan_guidance_is_refused(tmp_path):
    refused_early(tmp_path, "--prompt", "a cat", "--guidance", "nan", needles=["--guidance nan", "finite"])


@pytest.mark.parametrize("skip", ["0", "99"])
def test_clip_skip_out_of_range_is_refused(tmp_path, skip):
    refused_early(tmp_path, "--prompt", "a cat", "--clip-skip", skip, needles=[f"--clip-skip {skip}", "out of range"])


@pytest.mark.parametrize("seed", ["-1", "18446744073709551616", "0-18446744073709551616"])
def test_seed_out_of_range_is_refused(tmp_path, seed):
    refused_early(tmp_path, "--prompt", "a cat", "--seed", seed, needles=["out of range", "0 to 18446744073709551615"])


def test_backwards_seed_range_is_refused(tmp_path):
    refused_early(tmp_path, "--prompt", "a cat", "--seed", "9-3", needles=["runs backwards", "3-9"])


def test_out_that_is_a_file_is_refused_and_the_file_kept(tmp_path):
    (tmp_path / "taken").write_text("keep me")
    result = generate(tmp_path, "--prompt", "a cat", out="taken")
    assert_user_error(result, "generate", "--out taken is a file")
    assert (tmp_path / "taken").read_text() == "keep me"


def test_unwritable_out_is_refused_before_the_model_loads(tmp_path):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    try:
        result = generate(tmp_path, "--prompt", "a cat", out="ro/images", prefix=NO_DAC)
    finally:
        (tmp_path / "ro").chmod(0o755)
    assert_user_error(result, "generate", "--out ro/images: cannot write", "Permission denied")
    assert "Loading" not in result.stderr and list((tmp_path / "ro").iterdir()) == []


def test_non_utf8_prompt_file_is_an_error_with_its_line(tmp_path):
    (tmp_path / "prompts.txt").write_bytes(b"a cat\na caf\xe9\n")
    refused_early(tmp_path, "--prompt-file", "prompts.txt", needles=["prompts.txt:2: not UTF-8", "re-save"])


def test_unknown_sampler_is_refused_with_a_suggestion(tmp_path):
    refused_early(tmp_path, "--prompt", "a cat", "--scheduler", "DPM++ 2N", needles=["did you mean 'DPM++ 2M'"])


def test_size_not_a_multiple_of_8_is_refused(tmp_path):
    refused_early(tmp_path, "--prompt", "a cat", "--width", "36", needles=["--width 36", "multiple of 8"])


def test_bad_sweep_scale_is_refused(tmp_path):
    refused_early(tmp_path, "--prompt", "a cat", "--lora", "x.safetensors", "--sweep", "--sweep-scales", "0,half",
                  needles=["--sweep-scales", "'half' is not a number"])


def test_sd1_lora_on_sdxl_is_the_family_error(tmp_path, adapter_files):
    result = run_cli("generate", "--model", adapter_files["sdxl_model"], "--lora", adapter_files["sd1"],
                     "--prompt", "a cat", "--steps", "1", "--out", "out", cwd=tmp_path)
    assert_user_error(result, "generate", "cannot apply this community lora file to the SDXL pipeline",
                      "the keys look like SD1", "lora_unet_down_blocks_0", "Nothing was changed")
    assert not (tmp_path / "out").exists()


def test_sdxl_lora_on_sd1_is_the_family_error(tmp_path, adapter_files):
    result = generate(tmp_path, "--lora", adapter_files["sdxl"], "--prompt", "a cat")
    assert_user_error(result, "generate", "cannot apply this community lora file to the SD1 pipeline",
                      "the keys look like SDXL", "Nothing was changed")


def test_missing_lora_in_a_later_prompt_fails_before_any_image(tmp_path, adapter_files):
    out = tmp_path / "out"
    out.mkdir()
    (out / "00000-1.png").write_bytes(b"an earlier image")
    before = snapshot(out)
    (tmp_path / "p.jsonl").write_text('{"prompt": "a cat"}\n{"prompt": "a dog <lora:nowhere:0.5>"}\n')
    result = generate(tmp_path, "--prompt-file", "p.jsonl", "--seed", "1-3", "--lora-dir", ".")
    assert_user_error(result, "generate", "LoRA 'nowhere' not found")
    assert_unchanged(before, out)


def test_long_seed_range_streams_images(tmp_path):
    """`--seed 0-100000000` starts writing images at once with a small memory peak (a list of 10^8 requests
    took ~6 GB before the first image)."""
    cmd = [sys.executable, "-m", "sd_lora", "generate", "--model", "builtin:tiny", "--steps", "1", "--prompt",
           "a cat", "--seed", "0-100000000", "--out", "out"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=cli_env(tmp_path), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and proc.poll() is None and not list((tmp_path / "out").glob("*.png")):
            time.sleep(0.2)
        assert proc.poll() is None, proc.stderr.read()
        assert list((tmp_path / "out").glob("00000-0.png")), "no image within 90 s"
        with open(f"/proc/{proc.pid}/status") as f:
            peak_kb = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    finally:
        proc.kill()
        proc.wait()
    assert peak_kb < 1_500_000, f"peak memory {peak_kb} KB before the first image"


def test_good_run_writes_images_next_to_earlier_ones(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "00000-5.png").write_bytes(b"an earlier image")
    before = snapshot(out)
    result = generate(tmp_path, "--prompt", "a cat", "--seed", "1-2", "--width", "32", "--height", "32")
    assert_ok(result)
    after = snapshot(out)
    assert {k: after[k] for k in before} == before
    assert {"00001-1.png", "00002-2.png", "grid-00001.png"} <= set(after)


# ---- the same rules through the Python API (in-process, one tiny pipeline) -----------------------------------

@pytest.fixture(scope="module")
def tiny_pipe():
    import torch

    from sd_lora.inference import load_generation_pipeline

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the tiny model is far faster on one thread of a shared CPU
    pipe, info = load_generation_pipeline("builtin:tiny", device="cpu")
    pipe.set_progress_bar_config(disable=True)
    yield pipe, info
    torch.set_num_threads(threads)


def _images(pipe, info, lora_file, prompts):
    from sd_lora.inference import AdapterSet, GenerationRequest, generate_images

    adapters = AdapterSet(pipe, family=info.family)
    adapters.add(str(lora_file), name="style")
    requests = [GenerationRequest(p, seed=3, steps=1, width=32, height=32) for p in prompts]
    return [im.array for im in generate_images(pipe, requests, adapters=adapters, progress=False)]


def test_a1111_te_and_unet_weights_are_both_used(tiny_pipe, adapter_files):
    """The file adapts the UNet only: `<lora:style:1:0>` (UNet weight 0) is the base image, `<lora:style:0:1>`
    equals `<lora:style:1>`; the keyword forms parse to the same weights."""
    import numpy as np

    from sd_lora.inference import LoraRef, parse_prompt

    pipe, info = tiny_pipe
    base, te_only, unet_only, full = _images(pipe, info, adapter_files["sd1"], [
        "a red circle", "a red circle <lora:style:1:0>", "a red circle <lora:style:0:1>", "a red circle <lora:style:1>"])
    assert np.array_equal(te_only, base) and np.array_equal(unet_only, full)
    assert not np.array_equal(full, base)
    assert parse_prompt("<lora:style:1:unet=0>")[1] == parse_prompt("<lora:style:1:0>")[1] == [LoraRef("style", 1, 0)]
    assert parse_prompt("<lora:style:te=0:unet=1>")[1] == [LoraRef("style", 0, 1)]


@pytest.mark.parametrize("weight", [float("nan"), float("inf"), 101.0])
def test_api_refuses_bad_weights_before_generating(tiny_pipe, adapter_files, weight):
    from sd_lora.errors import SdLoraError
    from sd_lora.inference import AdapterSet, GenerationRequest, generate_images

    pipe, info = tiny_pipe
    adapters = AdapterSet(pipe, family=info.family)
    requests = [GenerationRequest("a cat", steps=1, width=32, height=32),
                GenerationRequest("a dog", steps=1, width=32, height=32, loras=[(str(adapter_files["sd1"]), weight)])]
    with pytest.raises(SdLoraError, match="request 2, LoRA .* is not allowed"):
        generate_images(pipe, requests, adapters=adapters, progress=False)


def test_api_refuses_nan_guidance_and_bad_seed(tiny_pipe):
    from sd_lora.errors import SdLoraError
    from sd_lora.inference import GenerationRequest, generate_images

    pipe, _ = tiny_pipe
    with pytest.raises(SdLoraError, match="request 1: guidance nan"):
        generate_images(pipe, [GenerationRequest("a", guidance=float("nan"))], progress=False)
    with pytest.raises(SdLoraError, match="request 1: seed -1"):
        generate_images(pipe, [GenerationRequest("a", seed=-1)], progress=False)
