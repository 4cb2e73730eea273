"""kohya dataset configs: key mapping, refusals, and kohya's step arithmetic (hand-computed cases)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from sd_lora.config.kohya.dataset import read_dataset_config
from sd_lora.config.load import ConfigError, config_from_dict, load_config
from sd_lora.data import make_plan, scan_dataset
from sd_lora.errors import SdLoraError


def images(folder, n, size=(64, 64), caption="sks cat", ext=".txt", seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        w, h = size
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{seed}_{i}.png")
        if caption is not None:
            (folder / f"{seed}_{i}{ext}").write_text(caption)
    return folder


def write(path, text):
    path.write_text(text)
    return path


def plan(cfg, **kw):
    steps = {"max_epochs": kw.pop("max_epochs")} if "max_epochs" in kw else {"max_steps": kw.pop("max_steps", 1)}
    return make_plan(cfg.data, scan_dataset(cfg.data), batch_size=cfg.train.batch_size,
                     gradient_accumulation_steps=cfg.train.gradient_accumulation_steps, **steps, **kw)


def test_keys_resolve_subset_then_dataset_then_general(tmp_path):
    cfg = write(tmp_path / "ds.toml", """
[general]
shuffle_caption = true
caption_extension = '.txt'
keep_tokens = 1
flip_aug = true

[[datasets]]
resolution = 512
batch_size = 4
keep_tokens = 2

  [[datasets.subsets]]
  image_dir = 'hoge'
  class_tokens = 'hoge girl'

  [[datasets.subsets]]
  image_dir = 'fuga'
  class_tokens = 'fuga boy'
  keep_tokens = 3
  num_repeats = 10

  [[datasets.subsets]]
  is_reg = true
  image_dir = 'reg'
  class_tokens = 'human'
  keep_tokens = 1
""")
    t = read_dataset_config(cfg)
    assert t.train == {"batch_size": 4}
    assert t.data["resolution"] == 512
    subs = t.data["subsets"]
    assert [s["keep_tokens"] for s in subs] == [2, 3, 1]  # subset, else dataset, else general
    assert [s["num_repeats"] for s in subs if "num_repeats" in s] == [10]
    assert all(s["shuffle_caption"] and s["flip_aug"] and s["caption_extension"] == ".txt" for s in subs)
    assert subs[0]["dir"] == str((tmp_path / "hoge").resolve())  # relative to the dataset config's folder
    assert subs[2]["is_reg"] is True and subs[2]["class_tokens"] == "human"


def test_caption_extension_defaults_to_kohyas_caption(tmp_path):
    t = read_dataset_config(write(tmp_path / "ds.toml", "[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'a'\n"))
    assert t.data["subsets"][0]["caption_extension"] == ".caption"


def test_every_unsupported_key_is_refused_with_its_reason_at_once(tmp_path):
    cfg = write(tmp_path / "ds.toml", """
[general]
color_aug = true
caption_prefix = 'masterpiece, '
bogus_key = 1

[[datasets]]
resolution = [768, 512]
  [[datasets.subsets]]
  image_dir = 'a'
  conditioning_data_dir = 'c'
  token_warmup_step = 5
  batch_size = 2
""")
    with pytest.raises(SdLoraError) as e:
        read_dataset_config(cfg)
    msg = str(e.value)
    assert "7 problem(s)" in msg
    assert "general.color_aug = True: not supported: sd-lora has no colour augmentation" in msg
    assert "general.caption_prefix" in msg and "data.trigger_word" in msg
    assert "general.bogus_key: not a kohya dataset config key" in msg
    assert "resolution = [768, 512]: not supported: sd-lora trains a square resolution" in msg
    assert "subsets[0].conditioning_data_dir" in msg and "ControlNet" in msg
    assert "subsets[0].token_warmup_step" in msg
    assert "subsets[0].batch_size: kohya allows this key only in [general] / [[datasets]]" in msg


def test_harmless_values_of_unsupported_keys_pass(tmp_path):
    t = read_dataset_config(write(tmp_path / "ds.toml", """
[general]
color_aug = false
caption_separator = ','
cache_info = true
[[datasets]]
resolution = [512, 512]
  [[datasets.subsets]]
  image_dir = 'a'
"""))
    assert t.data["resolution"] == 512
    assert t.ignored == ["general.cache_info: ignored (sd-lora reads image sizes itself; the key has no effect)"]


def test_wrong_types_and_several_datasets_are_named(tmp_path):
    cfg = write(tmp_path / "ds.toml", """
[[datasets]]
  [[datasets.subsets]]
  image_dir = 'a'
  num_repeats = 'ten'
[[datasets]]
  [[datasets.subsets]]
  image_dir = 'b'
""")
    with pytest.raises(SdLoraError) as e:
        read_dataset_config(cfg)
    assert "2 [[datasets]] tables: sd-lora trains one dataset" in str(e.value)
    cfg2 = write(tmp_path / "ds2.toml", "[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'a'\nnum_repeats = 'ten'\n")
    with pytest.raises(SdLoraError, match=r"subsets\[0\]\.num_repeats: expected int, got 'ten'"):
        read_dataset_config(cfg2)


def test_duplicate_and_zero_repeat_subsets_are_skipped_as_kohya_does(tmp_path):
    t = read_dataset_config(write(tmp_path / "ds.toml", """
[[datasets]]
  [[datasets.subsets]]
  image_dir = 'a'
  [[datasets.subsets]]
  image_dir = 'a'
  num_repeats = 3
  [[datasets.subsets]]
  image_dir = 'b'
  num_repeats = 0
"""))
    assert len(t.data["subsets"]) == 1 and "num_repeats" not in t.data["subsets"][0]
    assert any("the same 'a'" in n for n in t.ignored) and any("num_repeats = 0" in n for n in t.ignored)


def test_data_config_key_and_conflicts(tmp_path):
    images(tmp_path / "a", 2)
    ds = write(tmp_path / "ds.toml", "[[datasets]]\nbatch_size = 3\n[[datasets.subsets]]\nimage_dir = 'a'\n")
    cfg = config_from_dict({"data": {"config": str(ds)}, "train": {"batch_size": 1}})
    assert cfg.train.batch_size == 3  # the dataset config wins, as in kohya
    assert cfg.data.config is None and cfg.data.subsets[0].dir == str((tmp_path / "a").resolve())
    with pytest.raises(ConfigError, match="leave out data.dir"):
        config_from_dict({"data": {"config": str(ds), "dir": str(tmp_path / "a")}})
    bad = write(tmp_path / "bad.toml", "[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'a'\ncolor_aug = true\n")
    with pytest.raises(ConfigError, match=r"data.config \(.*bad.toml\): datasets\[0\].subsets\[0\].color_aug = True: not supported"):
        config_from_dict({"data": {"config": str(bad)}})


def test_config_file_path_is_relative_to_the_sd_lora_config(tmp_path):
    images(tmp_path / "k" / "a", 1)
    write(tmp_path / "k" / "ds.toml", "[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'a'\n")
    main = write(tmp_path / "train.toml", "[data]\nconfig = 'k/ds.toml'\n")
    cfg = load_config(main)
    assert cfg.data.subsets[0].dir == str((tmp_path / "k" / "a").resolve())


# --- kohya's arithmetic, computed by hand from its rules (train_util.DreamBoothDataset / BucketManager):
# samples = sum(images x num_repeats) of the training subsets; regularisation images are registered whole
# (with their repeats) until they reach that count, then incremented one at a time; each bucket gives
# ceil(samples / batch_size) batches; steps per epoch = ceil(batches / accumulation).

def _dataset(tmp_path, body):
    return config_from_dict({"data": {"config": str(write(tmp_path / "ds.toml", body))}})


def test_repeats_and_batches(tmp_path):
    images(tmp_path / "a", 3, seed=1)
    images(tmp_path / "b", 2, seed=2)
    cfg = _dataset(tmp_path, """
[general]
caption_extension = '.txt'
[[datasets]]
resolution = 64
batch_size = 4
  [[datasets.subsets]]
  image_dir = 'a'
  num_repeats = 5
  [[datasets.subsets]]
  image_dir = 'b'
  num_repeats = 2
""")
    p = plan(cfg, max_epochs=2)
    # 3x5 + 2x2 = 19 samples; ceil(19 / 4) = 5 batches; 2 epochs = 10 steps
    assert (p.samples_per_epoch, p.batches_per_epoch, p.max_steps) == (19, 5, 10)


def test_regularisation_fills_up_to_the_training_samples(tmp_path):
    images(tmp_path / "a", 3, seed=1)
    images(tmp_path / "r", 4, seed=2, caption=None)
    cfg = _dataset(tmp_path, """
[[datasets]]
resolution = 64
batch_size = 4
  [[datasets.subsets]]
  image_dir = 'a'
  num_repeats = 2
  caption_extension = '.txt'
  [[datasets.subsets]]
  image_dir = 'r'
  is_reg = true
  class_tokens = 'cat'
""")
    p = plan(cfg)
    # 6 training samples; reg: 4 images once (n = 4), then +1 for the first two (n = 6): 12 samples, 3 batches
    assert (p.samples_per_epoch, p.batches_per_epoch) == (12, 3)
    assert [s.samples for s in p.subsets] == [6, 6]


def test_regularisation_with_repeats_overshoots_like_kohya(tmp_path):
    images(tmp_path / "a", 5, seed=1)
    images(tmp_path / "r", 3, seed=2)
    cfg = _dataset(tmp_path, """
[general]
caption_extension = '.txt'
[[datasets]]
resolution = 64
batch_size = 2
  [[datasets.subsets]]
  image_dir = 'a'
  [[datasets.subsets]]
  image_dir = 'r'
  is_reg = true
  num_repeats = 2
""")
    p = plan(cfg)
    # 5 training samples; reg images are registered whole, 2 samples each: 2, 4, 6 >= 5 -> 6 reg samples;
    # 11 samples in one bucket: ceil(11 / 2) = 6 batches
    assert (p.samples_per_epoch, p.batches_per_epoch) == (11, 6)


def test_buckets_count_batches_per_bucket(tmp_path):
    images(tmp_path / "a", 3, size=(64, 64), seed=1)
    images(tmp_path / "a", 1, size=(96, 32), seed=2)
    cfg = _dataset(tmp_path, """
[general]
caption_extension = '.txt'
enable_bucket = true
min_bucket_reso = 32
max_bucket_reso = 128
bucket_reso_steps = 32
[[datasets]]
resolution = 64
batch_size = 2
  [[datasets.subsets]]
  image_dir = 'a'
  num_repeats = 3
""")
    p = plan(cfg, max_epochs=3)
    # bucket 64x64: 3 images x 3 = 9 samples -> 5 batches; bucket 96x32 (ratio 3): 3 samples -> 2 batches
    assert p.buckets == {(64, 64): 3, (96, 32): 1}
    assert (p.samples_per_epoch, p.batches_per_epoch, p.max_steps) == (12, 7, 21)


def test_fine_tuning_metadata_json(tmp_path):
    folder = images(tmp_path / "ft", 3, caption="caption file is not used", seed=4)
    stems = sorted(p.stem for p in folder.glob("*.png"))
    (folder / "extra.png").write_bytes((folder / f"{stems[0]}.png").read_bytes())  # not listed: not trained
    meta = {stems[0]: {"caption": "a cat", "tags": "1girl, solo"}, f"{stems[1]}.png": {"tags": "dog"},
            str((folder / stems[2]).resolve()): {"caption": "a bird"}}
    (tmp_path / "meta.json").write_text(json.dumps(meta))
    cfg = _dataset(tmp_path, """
[[datasets]]
resolution = 64
  [[datasets.subsets]]
  image_dir = 'ft'
  metadata_file = 'meta.json'
  num_repeats = 2
""")
    scan = scan_dataset(cfg.data)
    captions = {r.path.stem: r.caption for r in scan.subsets[0].records}
    assert captions == {stems[0]: "a cat,1girl, solo", stems[1]: "dog", stems[2]: "a bird"}
    assert plan(cfg).samples_per_epoch == 6


def test_fine_tuning_metadata_naming_a_missing_image(tmp_path):
    images(tmp_path / "ft", 1)
    (tmp_path / "meta.json").write_text(json.dumps({"nope": {"caption": "x"}}))
    cfg = _dataset(tmp_path, "[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'ft'\nmetadata_file = 'meta.json'\n")
    with pytest.raises(SdLoraError, match="1 image\\(s\\) named in the metadata are not in"):
        scan_dataset(cfg.data)
