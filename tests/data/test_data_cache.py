import os
from dataclasses import dataclass

import pytest
import torch
import torch.nn.functional as F

from sd_lora.data import build_dataloader, build_dataset, scan_dataset
from sd_lora.data.cache import (CACHE_DIRNAME, cache_latents, cache_text_outputs, latent_cache_path,
                                text_cache_blocker)
from sd_lora.errors import SdLoraError


class CountingEncoder:
    """A deterministic stand-in VAE: 2x average pooling to 3 'latent' channels; counts images encoded."""

    def __init__(self):
        self.calls, self.images = 0, 0

    def __call__(self, pixels):
        self.calls += 1
        self.images += pixels.shape[0]
        return F.avg_pool2d(pixels, 2) * 0.5


def make_data(tmp_path, noise_image, data_cfg, **kw):
    d = tmp_path / "data"
    for i, (w, h) in enumerate([(32, 32), (48, 32), (32, 48), (40, 32)]):
        noise_image(d / f"{i}.png", w, h, seed=i, caption=f"image {i}")
    kw.setdefault("enable_bucket", True)
    return data_cfg(d, min_bucket_reso=16, max_bucket_reso=64, bucket_reso_steps=8, cache_latents=True, **kw)


def test_disk_cache_is_reused_and_a_changed_image_invalidates_only_itself(tmp_path, noise_image, data_cfg):
    cfg = make_data(tmp_path, noise_image, data_cfg, cache_latents_to_disk=True)
    scan = scan_dataset(cfg)
    first = CountingEncoder()
    stats = cache_latents(build_dataset(cfg, scan), first, to_disk=True, batch_size=2, encoder_id="vae-a")
    assert (stats.encoded, stats.reused, first.images) == (4, 0, 4)
    files = sorted((tmp_path / "data" / CACHE_DIRNAME).glob("*.safetensors"))
    assert len(files) == 4

    again = CountingEncoder()
    stats = cache_latents(build_dataset(cfg, scan), again, to_disk=True, encoder_id="vae-a")
    assert again.calls == 0 and stats.reused == 4

    mtimes = {f.name: f.stat().st_mtime_ns for f in files}
    noise_image(tmp_path / "data" / "1.png", 48, 32, seed=99)  # same name and size, new content
    changed = CountingEncoder()
    ds = build_dataset(cfg, scan_dataset(cfg))
    stats = cache_latents(ds, changed, to_disk=True, encoder_id="vae-a")
    assert (changed.images, stats.reused) == (1, 3)
    rewritten = {f.name for f in files if f.stat().st_mtime_ns != mtimes[f.name]}
    assert rewritten == {latent_cache_path(ds.items[1]).name}
    other_vae = CountingEncoder()
    cache_latents(build_dataset(cfg, scan), other_vae, to_disk=True, encoder_id="vae-b")
    assert other_vae.images == 4
    assert not [p for p in (tmp_path / "data" / CACHE_DIRNAME).iterdir() if p.name.endswith(".tmp")]


def test_resolution_change_misses_the_cache(tmp_path, noise_image, data_cfg):
    cfg = make_data(tmp_path, noise_image, data_cfg, cache_latents_to_disk=True, enable_bucket=False)
    cache_latents(build_dataset(cfg, scan_dataset(cfg)), CountingEncoder(), to_disk=True)
    bigger = data_cfg(cfg.dir, resolution=48, cache_latents=True, cache_latents_to_disk=True)
    enc = CountingEncoder()
    cache_latents(build_dataset(bigger, scan_dataset(bigger)), enc, to_disk=True)
    assert enc.images == 4


@pytest.mark.parametrize("to_disk", [False, True])
def test_cached_samples_equal_uncached_ones_with_flip(tmp_path, noise_image, data_cfg, to_disk):
    cfg = make_data(tmp_path, noise_image, data_cfg, flip_aug=True, num_repeats=6,
                    cache_latents_to_disk=to_disk)
    scan = scan_dataset(cfg)
    plain, cached = build_dataset(cfg, scan, seed=4), build_dataset(cfg, scan, seed=4)
    enc = CountingEncoder()
    stats = cache_latents(cached, enc, to_disk=to_disk, batch_size=3)
    assert stats.encoded == 4 and enc.images == 8  # both orientations of each image
    unflipped = {it.key: plain.pixels(it, plain.view(it, None)) for it in plain.items}
    flipped_seen = set()
    for a, b in zip(build_dataloader(plain, batch_size=2, seed=4), build_dataloader(cached, batch_size=2, seed=4)):
        assert "pixel_values" not in b and a["keys"] == b["keys"] and a["captions"] == b["captions"]
        assert torch.allclose(enc(a["pixel_values"]), b["latents"], atol=1e-6)
        assert torch.equal(a["crop_top_left"], b["crop_top_left"])
        flipped_seen |= {not torch.equal(px, unflipped[k]) for px, k in zip(a["pixel_values"], a["keys"])}
    assert flipped_seen == {True, False}  # both orientations were served from the cache


def test_random_crop_with_cache_is_refused(tmp_path, noise_image, data_cfg):
    from sd_lora.config.data import DataConfig

    cfg = DataConfig(dir=str(tmp_path), random_crop=True, cache_latents=True)
    assert any("random_crop" in p and "cache_latents" in p for p in cfg.validate())
    noise_image(tmp_path / "rc" / "a.png", 48, 32)
    rc = data_cfg(tmp_path / "rc", random_crop=True)
    ds = build_dataset(rc, scan_dataset(rc))
    with pytest.raises(SdLoraError, match="random_crop cannot be combined with cache_latents"):
        cache_latents(ds, CountingEncoder())


@dataclass
class Embeds:
    hidden_states: torch.Tensor
    pooled: torch.Tensor | None = None


def test_text_cache_decision_and_contents(tmp_path, noise_image, data_cfg):
    cfg = make_data(tmp_path, noise_image, data_cfg, trigger_word="sks", num_repeats=2)
    ds = build_dataset(cfg, scan_dataset(cfg))
    assert text_cache_blocker(ds, train_text_encoder=False) is None
    assert "text encoder is being trained" in text_cache_blocker(ds, train_text_encoder=True)
    shuffled_cfg = make_data(tmp_path, noise_image, data_cfg, shuffle_caption=True)
    reason = text_cache_blocker(build_dataset(shuffled_cfg, scan_dataset(shuffled_cfg)), False)
    assert "shuffle_caption" in reason
    dropout_cfg = make_data(tmp_path, noise_image, data_cfg, caption_dropout_rate=0.1)
    assert "caption_dropout_rate" in text_cache_blocker(build_dataset(dropout_cfg, scan_dataset(dropout_cfg)), False)

    seen = []

    def encode_text(captions):
        seen.extend(captions)
        codes = torch.tensor([[float(len(c)), float(sum(map(ord, c)))] for c in captions])
        return Embeds(codes[:, None, :].repeat(1, 3, 1), None)

    assert cache_text_outputs(ds, encode_text, batch_size=3).encoded == 4
    assert sorted(seen) == sorted(f"sks, image {i}" for i in range(4))
    batch = next(iter(build_dataloader(ds, batch_size=1, seed=0)))
    assert set(batch["text_embeds"]) == {"hidden_states"}
    expected = encode_text(batch["captions"]).hidden_states
    assert torch.equal(batch["text_embeds"]["hidden_states"], expected)


def test_memory_cache_writes_no_files(tmp_path, noise_image, data_cfg):
    cfg = make_data(tmp_path, noise_image, data_cfg)
    cache_latents(build_dataset(cfg, scan_dataset(cfg)), CountingEncoder())
    assert not os.path.exists(tmp_path / "data" / CACHE_DIRNAME)
