import pytest
from PIL import Image

from sd_lora.config.data import DataConfig, SubsetConfig
from sd_lora.data import build_dataset, scan_dataset
from sd_lora.data.prior import class_images_needed, prepare_class_images
from sd_lora.errors import SdLoraError


class FakeGenerator:
    def __init__(self):
        self.calls = []

    def __call__(self, prompts, seeds):
        self.calls.append((list(prompts), list(seeds)))
        return [Image.new("RGB", (32, 32), (seed % 256, 0, 0)) for seed in seeds]


def make_cfg(tmp_path, noise_image, reg_dir, **kw):
    noise_image(tmp_path / "data" / "a.png", 32, 32, caption="sks dog")
    return DataConfig(dir=str(tmp_path / "data"), resolution=32, class_prompt="a photo of a dog",
                      subsets=[SubsetConfig(dir=str(reg_dir), is_reg=True, num_class_images=4)], **kw)


def test_missing_class_images_are_generated_once(tmp_path, noise_image):
    reg = tmp_path / "reg"
    noise_image(reg / "existing.png", 32, 32, seed=5)
    cfg = make_cfg(tmp_path, noise_image, reg, prior_loss_weight=0.7)
    scan = scan_dataset(cfg)
    assert class_images_needed(scan) == 3
    gen = FakeGenerator()
    scan = prepare_class_images(cfg, scan, gen, seed=100, batch_size=2)
    assert [len(p) for p, _ in gen.calls] == [2, 1]
    assert sum((s for _, s in gen.calls), []) == [100, 101, 102]
    assert {p for prompts, _ in gen.calls for p in prompts} == {"a photo of a dog"}
    assert sorted(p.name for p in reg.iterdir()) == sorted(
        ["existing.png"] + [f"class_{i:05d}{ext}" for i in range(3) for ext in (".png", ".txt")])
    assert scan.reg_images == 4 and class_images_needed(scan) == 0
    generated = [r for s in scan.subsets for r in s.records if r.path.name.startswith("class_")]
    assert {r.caption for r in generated} == {"a photo of a dog"}
    assert Image.open(reg / "class_00001.png").getpixel((0, 0)) == (101, 0, 0)

    again = FakeGenerator()
    rescanned = prepare_class_images(cfg, scan_dataset(cfg), again, seed=100)
    assert again.calls == [] and rescanned.reg_images == 4
    ds = build_dataset(cfg, rescanned)
    assert sorted(ds[i]["loss_weight"] for i in range(len(ds))) == [0.7, 1.0]


def test_regularisation_folder_is_created_when_missing(tmp_path, noise_image):
    reg = tmp_path / "not_yet"
    cfg = make_cfg(tmp_path, noise_image, reg)
    scan = prepare_class_images(cfg, scan_dataset(cfg), FakeGenerator())
    assert reg.is_dir() and scan.reg_images == 4


def test_generation_without_a_prompt_fails_before_any_model(tmp_path, noise_image):
    noise_image(tmp_path / "data" / "a.png", 32, 32)
    cfg = DataConfig(dir=str(tmp_path / "data"), resolution=32,
                     subsets=[SubsetConfig(dir=str(tmp_path / "reg"), is_reg=True, num_class_images=2)])
    with pytest.raises(SdLoraError, match="class images must be generated but no prompt"):
        scan_dataset(cfg)
