import pytest
import torch

from sd_lora.data import build_dataloader, build_dataset, has_validation, scan_dataset
from sd_lora.data.validation import holdout_keys, validation_noise
from sd_lora.errors import SdLoraError


def write(folder, noise_image, n, prefix="img"):
    for i in range(n):
        noise_image(folder / f"{prefix}{i}.png", 48, 32, seed=i, caption=f"t{i}, a, b")


def test_split_is_deterministic_disjoint_and_sized(tmp_path, noise_image, data_cfg):
    write(tmp_path / "data", noise_image, 10)
    cfg = data_cfg(tmp_path / "data", validation_split=0.2, num_repeats=3, flip_aug=True, shuffle_caption=True,
                   random_crop=True)
    assert has_validation(cfg)
    scan = scan_dataset(cfg)
    train, val = build_dataset(cfg, scan, "train", seed=1), build_dataset(cfg, scan, "validation", seed=1)
    train_keys = {it.key for it in train.items}
    val_keys = {it.key for it in val.items}
    assert len(val_keys) == 2 and len(train_keys) == 8 and not train_keys & val_keys
    assert len(val) == 2 and len(train) == 8 * 3  # no repeats in validation
    assert {it.key for it in build_dataset(cfg, scan, "validation", seed=1).items} == val_keys
    other_seeds = [{it.key for it in build_dataset(cfg, scan, "validation", seed=s).items} for s in range(2, 8)]
    assert any(keys != val_keys for keys in other_seeds)


def test_validation_samples_are_fixed(tmp_path, noise_image, data_cfg):
    write(tmp_path / "data", noise_image, 6)
    cfg = data_cfg(tmp_path / "data", validation_split=0.5, flip_aug=True, shuffle_caption=True,
                   caption_dropout_rate=0.5, random_crop=True)
    val = build_dataset(cfg, scan_dataset(cfg), "validation", seed=3)
    loader = build_dataloader(val, batch_size=2, seed=3)
    first = [b for b in loader]
    loader.set_epoch(5)
    second = [b for b in loader]
    for a, b in zip(first, second):
        assert a["keys"] == b["keys"] and a["captions"] == b["captions"]
        assert torch.equal(a["pixel_values"], b["pixel_values"]) and torch.equal(a["noise_seed"], b["noise_seed"])
        assert all(c.startswith("t") and c.endswith(", a, b") for c in a["captions"])  # unshuffled, never dropped
        assert a["crop_top_left"].tolist() == [[0, 8]] * len(a["keys"])  # centre crop of 48x32


def test_validation_noise_depends_only_on_each_samples_seed():
    seeds = torch.tensor([11, 22, 33])
    noise, t = validation_noise(seeds, (4, 8, 8), 1000)
    assert noise.shape == (3, 4, 8, 8) and t.shape == (3,) and ((0 <= t) & (t < 1000)).all()
    alone, t_alone = validation_noise(seeds[1:2], (4, 8, 8), 1000)
    assert torch.equal(alone[0], noise[1]) and t_alone[0] == t[1]
    assert not torch.equal(noise[0], noise[1])


def test_validation_dir(tmp_path, noise_image, data_cfg):
    write(tmp_path / "data", noise_image, 3)
    write(tmp_path / "val", noise_image, 2, prefix="v")
    cfg = data_cfg(tmp_path / "data", validation_dir=str(tmp_path / "val"), trigger_word="sks")
    scan = scan_dataset(cfg)
    val = build_dataset(cfg, scan, "validation", seed=0)
    assert sorted(it.record.path.name for it in val.items) == ["v0.png", "v1.png"]
    assert len(build_dataset(cfg, scan, "train", seed=0)) == 3
    assert val[0]["caption"].startswith("sks, ")


def test_holdout_never_takes_everything():
    assert holdout_keys(["a"], 0.5, 0) == set()
    assert len(holdout_keys(["a", "b"], 0.9, 0)) == 1
    assert len(holdout_keys([str(i) for i in range(100)], 0.1, 0)) == 10


def test_split_of_a_single_image_is_an_error(tmp_path, noise_image, data_cfg):
    write(tmp_path / "data", noise_image, 1)
    with pytest.raises(SdLoraError, match="validation_split = 0.5 needs at least 2 training images"):
        scan_dataset(data_cfg(tmp_path / "data", validation_split=0.5))
