"""Round 2 (B): damaged latent and text-encoder cache files on disk are re-encoded with a note, never trained on.

Each case trains `builtin:tiny` through the real CLI with both disk caches, damages one latent file and one
text file in a way that keeps its cache key (so only checking what the file holds can catch it), trains again
and expects the note naming both files, both files rewritten with what they held before, and the adapter of
the undamaged run (within float noise: a file re-encoded alone differs in the last bits from one encoded in a
batch of three).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tests.reliability.conftest import assert_ok, run_cli, write_image

CACHED = ["--set", "data.cache_latents_to_disk=true", "--set", "data.cache_text_encoder_outputs_to_disk=true"]


def train(data: Path, out: Path):
    return run_cli("train", "--set", f"data.dir={data}", "--set", "data.resolution=32", "--set", f"output.dir={out}",
                   "--set", "output.log_with=none", "--set", "network.rank=2", "--set", "train.batch_size=1",
                   "--set", "train.max_steps=3", *CACHED, cwd=data.parent)


@pytest.fixture(scope="module")
def cached_run(tmp_path_factory):
    """Three images trained once with both caches on disk: the cache files and the adapter they give."""
    root = tmp_path_factory.mktemp("r2b_cache")
    for i in range(3):
        write_image(root / "data" / f"{i}.png", colour=(60 * i, 40, 200 - 50 * i), caption=f"shape {i}")
    assert_ok(train(root / "data", root / "first"))
    return root


def damage(path: Path, how: str) -> None:
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    name, t = next(iter(sorted(tensors.items())))
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) - t.numel() * t.element_size() // 2])
        return
    if how == "shape":
        tensors[name] = t.flatten()[: t.numel() // 2].reshape(-1, 1).clone()
    elif how == "nan":
        tensors[name] = t.clone()
        tensors[name].view(-1)[0] = float("nan")
    elif how == "key":
        tensors["something_else"] = tensors.pop(name)
    elif how == "dtype":
        tensors[name] = t.to(torch.int32)
    save_file(tensors, str(path), metadata=meta)  # the same cache key: only the contents are wrong


@pytest.mark.parametrize("how, reason", [("shape", "has shape"), ("nan", "NaN or infinite"),
                                         ("truncated", "unreadable"), ("key", "expected ["), ("dtype", "int32")])
def test_a_damaged_cache_file_is_re_encoded_with_a_note_never_trained_on(cached_run, tmp_path, how, reason):
    data = tmp_path / "data"
    shutil.copytree(cached_run / "data", data)
    latent = sorted((data / ".sd_lora_cache").glob("*.safetensors"))[1]
    text = sorted((data / ".sd_lora_cache" / "text").glob("*.safetensors"))[0]
    before = {p: {k: v.clone() for k, v in load_file(str(p)).items()} for p in (latent, text)}  # not a view of the file
    damage(latent, how)
    damage(text, how)
    result = train(data, tmp_path / "out")
    assert_ok(result)
    assert "note: re-encoded 1 latent cache file(s)" in result.stdout, result.stdout
    assert "note: re-encoded 1 text-encoder output cache file(s)" in result.stdout, result.stdout
    assert f"{latent}: " in result.stdout and f"{text}: " in result.stdout
    assert result.stdout.count(reason) >= 2, result.stdout
    assert "2 reused from the disk cache" in result.stdout  # the two undamaged latent files
    for path, tensors in before.items():
        rewritten = load_file(str(path))
        assert rewritten.keys() == tensors.keys()
        assert all(torch.allclose(rewritten[k], tensors[k], atol=1e-5) for k in tensors), path
    first = load_file(str(cached_run / "first" / "lora.safetensors"))
    again = load_file(str(tmp_path / "out" / "lora.safetensors"))
    assert [k for k in first if not torch.allclose(first[k], again[k], rtol=1e-3, atol=1e-6)] == []
