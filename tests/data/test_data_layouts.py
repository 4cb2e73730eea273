"""Repeat folders, subsets, regularisation balance, metadata.jsonl and the caption fallback order."""

import json
from collections import Counter

from sd_lora.config.data import DataConfig, SubsetConfig
from sd_lora.data import build_dataset, scan_dataset


def test_kohya_repeat_folders(tmp_path, noise_image):
    d = tmp_path / "data"
    for i in range(3):
        noise_image(d / "10_mychar" / f"{i}.png", 32, 32, seed=i)
    noise_image(d / "2_other style" / "a.png", 32, 32, seed=9, caption="own caption")
    noise_image(d / "2_other style" / "b.png", 32, 32, seed=8)
    (d / ".sd_lora_cache").mkdir()  # hidden folders are not repeat folders
    cfg = DataConfig(dir=str(d), resolution=32)
    scan = scan_dataset(cfg)
    assert [(s.spec.name, s.spec.num_repeats, len(s.records)) for s in scan.subsets] == \
        [("mychar", 10, 3), ("other style", 2, 2)]
    ds = build_dataset(cfg, scan, seed=0)
    assert len(ds) == 3 * 10 + 2 * 2
    keys = Counter(ds.items[i].record.path.name for i in ds.entries)
    assert keys["0.png"] == 10 and keys["a.png"] == 2
    captions = {r.path.name: r.caption for s in scan.subsets for r in s.records}
    assert captions == {"0.png": "mychar", "1.png": "mychar", "2.png": "mychar",
                        "a.png": "own caption", "b.png": "other style"}


def test_subsets_with_their_own_settings_and_regularisation(tmp_path, noise_image):
    main, extra, reg = tmp_path / "main", tmp_path / "extra", tmp_path / "reg"
    for i in range(2):
        noise_image(main / f"m{i}.png", 32, 32, seed=i, caption="m")
    for i in range(3):
        noise_image(extra / f"e{i}.png", 32, 32, seed=10 + i)
        (extra / f"e{i}.caption").write_text(f"extra {i}")
    for i in range(4):
        noise_image(reg / f"r{i}.png", 32, 32, seed=20 + i)
    cfg = DataConfig(dir=str(main), resolution=32, num_repeats=3, prior_loss_weight=0.5, trigger_word="sks",
                     subsets=[SubsetConfig(dir=str(extra), num_repeats=2, caption_extension=".caption",
                                           flip_aug=True),
                              SubsetConfig(dir=str(reg), is_reg=True, class_tokens="a dog")])
    assert cfg.validate() == []
    scan = scan_dataset(cfg)
    assert scan.train_images == 5 and scan.reg_images == 4
    ds = build_dataset(cfg, scan, seed=0)
    train_samples = 2 * 3 + 3 * 2
    assert len(ds) == 2 * train_samples  # regularisation is balanced to the training samples
    samples = [ds[i] for i in range(len(ds))]
    reg_samples = [s for s in samples if "/reg/" in s["key"]]
    assert len(reg_samples) == train_samples
    assert {s["loss_weight"] for s in reg_samples} == {0.5}
    assert {s["loss_weight"] for s in samples if "/reg/" not in s["key"]} == {1.0}
    assert Counter(s["key"] for s in reg_samples).most_common()[-1][1] == train_samples // 4
    assert {s["caption"] for s in reg_samples} == {"a dog"}  # no trigger word on class images
    assert {s["caption"] for s in samples if "/extra/" in s["key"]} == {"sks, extra 0", "sks, extra 1", "sks, extra 2"}
    specs = {s.spec.dir.name: s.spec for s in scan.subsets}
    assert specs["extra"].flip_aug and not specs["main"].flip_aug


def test_reg_data_dir_shorthand(tmp_path, noise_image):
    noise_image(tmp_path / "data" / "a.png", 32, 32, caption="sks dog")
    noise_image(tmp_path / "reg" / "1_dog" / "r.png", 32, 32, seed=3)
    cfg = DataConfig(dir=str(tmp_path / "data"), reg_data_dir=str(tmp_path / "reg"), resolution=32, num_repeats=4,
                     prior_loss_weight=0.25)
    scan = scan_dataset(cfg)
    reg = [s for s in scan.subsets if s.spec.is_reg]
    assert len(reg) == 1 and reg[0].records[0].caption == "dog"
    ds = build_dataset(cfg, scan, seed=0)
    assert len(ds) == 8 and sum(ds[i]["loss_weight"] == 0.25 for i in range(8)) == 4


def test_caption_fallback_order(tmp_path, noise_image):
    d = tmp_path / "data"
    noise_image(d / "file.png", 32, 32, seed=1, caption="from file")
    noise_image(d / "meta.png", 32, 32, seed=2)
    noise_image(d / "none.png", 32, 32, seed=3)
    noise_image(d / "sub" / "nested.png", 32, 32, seed=4)
    rows = [{"file_name": "file.png", "text": "metadata loses to the file"},
            {"file_name": "meta.png", "text": "from metadata"},
            {"file_name": "sub/nested.png", "text": "nested via metadata"},
            {"file_name": "missing.png", "text": "no such file"}]
    (d / "metadata.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    scan = scan_dataset(DataConfig(dir=str(d), resolution=32, class_tokens="fallback"))
    got = {r.path.name: (r.caption, r.caption_source) for r in scan.subsets[0].records}
    assert got == {"file.png": ("from file", "file"), "meta.png": ("from metadata", "metadata"),
                   "none.png": ("fallback", "class_tokens"), "nested.png": ("nested via metadata", "metadata")}
    assert any("1 image(s) have no caption file or metadata entry" in w for w in scan.warnings)
    assert any("do not exist" in w and "missing.png" in w for w in scan.warnings)


def test_flat_folder_ignores_unrelated_subfolders(tmp_path, noise_image):
    d = tmp_path / "data"
    noise_image(d / "a.png", 32, 32)
    noise_image(d / "originals" / "raw.png", 32, 32)
    scan = scan_dataset(DataConfig(dir=str(d), resolution=32))
    assert [r.path.name for s in scan.subsets for r in s.records] == ["a.png"]
