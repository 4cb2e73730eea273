"""'auto' caches: on exactly when they cannot change the result, in the UNet's dtype, on disk past the memory
budget; the text-encoder cache on disk, content-keyed and reused; the plan says what was chosen and why."""

import pytest
import torch
import torch.nn.functional as F

from sd_lora.config.data import DataConfig
from sd_lora.data import build_dataloader, build_dataset, scan_dataset
from sd_lora.data.cache import (CACHE_DIRNAME, cache_latents, cache_text_outputs, choose_caches,
                                latent_cache_bytes, memory_budget, text_cache_key)
from sd_lora.data.plan import format_plan, make_plan
from sd_lora.errors import SdLoraError


def _data(tmp_path, noise_image, data_cfg, n=4, **kw):
    d = tmp_path / "data"
    for i in range(n):
        noise_image(d / f"{i}.png", 32, 32, seed=i, caption=f"image {i}")
    return data_cfg(d, **kw)


def _choice(cfg, train_te=False, seen=None):
    return choose_caches(cfg, build_dataset(cfg, scan_dataset(cfg)), train_te, seen)


def test_auto_decisions_and_their_reasons(tmp_path, noise_image, data_cfg):
    cfg = _data(tmp_path, noise_image, data_cfg, flip_aug=True)
    assert (cfg.cache_latents, cfg.cache_text_encoder_outputs) == ("auto", "auto")  # the defaults
    c = _choice(cfg)
    assert c.latents and c.text and "no random crop" in c.latents_reason and "frozen" in c.text_reason

    c = _choice(data_cfg(cfg.dir, random_crop=True, shuffle_caption=True))
    assert not c.latents and "random_crop" in c.latents_reason
    assert not c.text and "shuffle_caption" in c.text_reason
    assert not _choice(cfg, train_te=True).text
    assert not _choice(data_cfg(cfg.dir, caption_dropout_rate=0.1)).text

    # 4 images x 2 orientations = 8 encodes: not worth it for a run that sees 5 samples
    c = _choice(cfg, seen=5)
    assert not c.latents and "5 samples" in c.latents_reason and "8 images" in c.latents_reason
    assert c.text  # 4 captions <= 5 samples
    assert _choice(cfg, seen=8).latents

    off = _choice(data_cfg(cfg.dir, cache_latents=False, cache_text_encoder_outputs=False))
    assert not off.latents and not off.text and "= false" in off.latents_reason


def test_true_with_random_crop_is_one_clear_error(tmp_path, noise_image, data_cfg):
    cfg = _data(tmp_path, noise_image, data_cfg)
    forced = DataConfig(dir=cfg.dir, resolution=32, random_crop=True, cache_latents=True)
    assert any("random_crop" in p for p in forced.validate())
    auto = data_cfg(cfg.dir, random_crop=True)  # auto + random crop is valid: it just does not cache
    assert auto.validate() == []
    with pytest.raises(SdLoraError, match="random_crop cannot be combined with cache_latents"):
        choose_caches(forced, build_dataset(auto, scan_dataset(auto)), False)


@pytest.mark.parametrize("bad, message", [({"cache_memory_gb": -1.0}, "cache_memory_gb: must not be negative"),
                                          ({"cache_latents": False, "cache_latents_to_disk": True}, "needs"),
                                          ({"cache_text_encoder_outputs": False,
                                            "cache_text_encoder_outputs_to_disk": True}, "needs")])
def test_bad_cache_settings_are_reported(bad, message):
    problems = DataConfig(dir="x", **bad).validate()
    assert len(problems) == 1 and message in problems[0], problems


def test_cache_latents_accepts_auto_true_false_only():
    from sd_lora.config.load import ConfigError, config_from_dict

    assert config_from_dict({"data": {"dir": "x", "cache_latents": "auto"}}).data.cache_latents == "auto"
    with pytest.raises(ConfigError, match="data.cache_latents"):
        config_from_dict({"data": {"dir": "x", "cache_latents": "sometimes"}})


def test_memory_cache_is_stored_in_the_given_dtype(tmp_path, noise_image, data_cfg):
    cfg = _data(tmp_path, noise_image, data_cfg, flip_aug=True)
    ds = build_dataset(cfg, scan_dataset(cfg))
    stats = cache_latents(ds, lambda px: F.avg_pool2d(px, 8)[:, :3], dtype=torch.bfloat16)
    batch = next(iter(build_dataloader(ds, batch_size=2, seed=0)))
    assert batch["latents"].dtype == torch.bfloat16
    assert stats.nbytes == latent_cache_bytes(ds, 3, 8, torch.bfloat16) == 4 * 2 * 3 * 4 * 4 * 2


def test_memory_budget():
    assert memory_budget(0.5) == 2**29
    assert memory_budget(0) == 0
    assert 0 < memory_budget(None) < 2**50  # half of what the machine has free


def _embed(captions):
    codes = torch.tensor([[float(len(c)), float(sum(map(ord, c)))] for c in captions])
    return {"hidden_states": codes[:, None, :].repeat(1, 3, 1)}


def test_text_cache_on_disk_is_content_keyed_and_reused(tmp_path, noise_image, data_cfg):
    cfg = _data(tmp_path, noise_image, data_cfg, n=3)
    settings = {"encoders": "abc", "clip_skip": 1, "max_token_length": 75}
    stats = cache_text_outputs(build_dataset(cfg, scan_dataset(cfg)), _embed, to_disk=True, settings=settings)
    assert (stats.encoded, stats.reused, stats.nbytes) == (3, 0, 0)
    files = sorted((tmp_path / "data" / CACHE_DIRNAME / "text").glob("*.safetensors"))
    assert len(files) == 3
    assert {f.name[:40] for f in files} == {text_cache_key(f"image {i}", settings)[:40] for i in range(3)}

    ds = build_dataset(cfg, scan_dataset(cfg))
    calls = []
    again = cache_text_outputs(ds, lambda caps: calls.append(caps) or _embed(caps), to_disk=True, settings=settings)
    # one caption encoded once, as the template every reused file's names, shapes and dtypes must match
    assert (again.encoded, again.reused, calls) == (0, 3, [["image 0"]])
    batch = next(iter(build_dataloader(ds, batch_size=1, seed=0)))
    assert torch.equal(batch["text_embeds"]["hidden_states"], _embed(batch["captions"])["hidden_states"])

    for changed in ({**settings, "clip_skip": 2}, {**settings, "max_token_length": 150}, {**settings, "encoders": "x"}):
        assert cache_text_outputs(build_dataset(cfg, scan_dataset(cfg)), _embed, to_disk=True,
                                  settings=changed).encoded == 3
    (tmp_path / "data" / "1.txt").write_text("a new caption")  # only the changed caption is encoded again
    assert cache_text_outputs(build_dataset(cfg, scan_dataset(cfg)), _embed, to_disk=True,
                              settings=settings).encoded == 1


def test_text_cache_goes_to_disk_past_the_memory_budget(tmp_path, noise_image, data_cfg):
    cfg = _data(tmp_path, noise_image, data_cfg, n=3)
    per_caption = 3 * 2 * 4  # [3, 2] float32
    ds = build_dataset(cfg, scan_dataset(cfg))
    assert not cache_text_outputs(ds, _embed, memory_budget=3 * per_caption).to_disk
    assert ds.text_cache.nbytes == 3 * per_caption
    stats = cache_text_outputs(ds, _embed, memory_budget=3 * per_caption - 1)
    assert stats.to_disk and stats.nbytes == 0 and len(ds.text_cache) == 3
    assert len(list((tmp_path / "data" / CACHE_DIRNAME / "text").glob("*.safetensors"))) == 3


def test_plan_says_what_auto_chose_and_why(tmp_path, noise_image, data_cfg):
    cfg = _data(tmp_path, noise_image, data_cfg, n=4)
    text = format_plan(make_plan(cfg, scan_dataset(cfg), batch_size=2, max_steps=10))
    assert "VAE latents in memory" in text and "[auto: on, no random crop]" in text
    assert "text-encoder outputs in memory [auto: on, text encoders frozen and captions fixed]" in text
    short = format_plan(make_plan(cfg, scan_dataset(cfg), batch_size=1, max_steps=2))
    assert "VAE latents NOT cached [auto: off, the run trains on 2 samples and caching would encode 4" in short
    crop = data_cfg(cfg.dir, random_crop=True, cache_text_encoder_outputs_to_disk=True)
    text = format_plan(make_plan(crop, scan_dataset(crop), batch_size=2, max_steps=10))
    assert "VAE latents NOT cached [auto: off, data.dir: random_crop" in text
    assert f"text-encoder outputs on disk in {CACHE_DIRNAME}/text/" in text
