import math

import numpy as np
import torch
from PIL import Image, ImageOps

from sd_lora.data import build_dataloader, build_dataset, scan_dataset
from sd_lora.data.buckets import bucket_report

RES, LO, HI, STEP = 64, 32, 128, 16
BUCKET_KW = dict(resolution=RES, enable_bucket=True, min_bucket_reso=LO, max_bucket_reso=HI, bucket_reso_steps=STEP)


def expected_bucket(w, h):
    """The documented rule, brute-forced: among all sides in [LO, HI] on the step grid whose area fits RES²,
    for each width the tallest; plus the square; pick the closest log aspect ratio, ties to the larger area."""
    sides = range(LO, HI + 1, STEP)
    fitting = [(bw, bh) for bw in sides for bh in sides if bw * bh <= RES * RES]
    tallest = {}
    for bw, bh in fitting:
        tallest[bw] = max(tallest.get(bw, 0), bh)
    candidates = {(bw, bh) for bw, bh in tallest.items()} | {(bh, bw) for bw, bh in tallest.items()} | {(RES, RES)}
    best = min(abs(math.log(b[0] / b[1]) - math.log(w / h)) for b in candidates)
    ties = [b for b in candidates if abs(abs(math.log(b[0] / b[1]) - math.log(w / h)) - best) < 1e-12]
    return max(ties, key=lambda b: (b[0] * b[1], -b[0]))


SIZES = [(64, 64), (100, 50), (50, 100), (90, 60), (60, 90), (200, 40), (40, 200), (81, 79), (120, 70)]


def write_sizes(folder, noise_image, sizes=SIZES):
    for i, (w, h) in enumerate(sizes):
        noise_image(folder / f"{i:02d}_{w}x{h}.png", w, h, seed=i)


def test_images_land_in_the_expected_buckets(tmp_path, noise_image, data_cfg, caplog):
    write_sizes(tmp_path / "data", noise_image)
    cfg = data_cfg(tmp_path / "data", **BUCKET_KW)
    ds = build_dataset(cfg, scan_dataset(cfg))
    for item in ds.items:
        assert item.bucket == expected_bucket(item.record.width, item.record.height), item.record.path.name
        assert item.bucket[0] * item.bucket[1] <= RES * RES
    for i in range(len(ds)):
        w, h = ds.items[ds.entries[i]].bucket
        assert ds[i]["pixel_values"].shape == (3, h, w)
    assert len({it.bucket for it in ds.items}) >= 5
    report = bucket_report([it.bucket for it in ds.items])
    assert f"{RES}x{RES}: 2 images" in report


def test_no_upscale_keeps_small_images_at_their_size(tmp_path, noise_image, data_cfg):
    d = tmp_path / "data"
    small = noise_image(d / "small.png", 48, 32)
    noise_image(d / "large.png", 200, 100, seed=1)
    cfg = data_cfg(d, bucket_no_upscale=True, **BUCKET_KW)
    ds = build_dataset(cfg, scan_dataset(cfg))
    buckets = {it.record.path.name: it.bucket for it in ds.items}
    assert buckets["small.png"] == (48, 32)
    scale = RES / math.sqrt(200 * 100)  # scaled down to the pixel budget, then floored to the step
    assert buckets["large.png"] == (int(200 * scale) // STEP * STEP, int(100 * scale) // STEP * STEP)
    sample = next(ds[i] for i in range(len(ds)) if ds[i]["key"].endswith("small.png"))
    original = torch.from_numpy(np.array(Image.open(small))).permute(2, 0, 1).float() / 127.5 - 1
    assert torch.allclose(sample["pixel_values"], original, atol=1e-5)  # not resampled at all
    for item in ds.items:
        assert item.bucket[0] <= item.record.width and item.bucket[1] <= item.record.height


def test_every_batch_has_one_size_and_each_sample_appears_once(tmp_path, noise_image, data_cfg):
    write_sizes(tmp_path / "data", noise_image)
    cfg = data_cfg(tmp_path / "data", num_repeats=3, **BUCKET_KW)
    ds = build_dataset(cfg, scan_dataset(cfg), seed=3)
    loader = build_dataloader(ds, batch_size=2, seed=3)
    seen = []
    for batch in loader:
        assert len(set(map(tuple, batch["target_size"].tolist()))) == 1
        assert batch["pixel_values"].shape[2:] == tuple(batch["target_size"][0].tolist())
        seen += batch["keys"]
    assert sorted(seen) == sorted(ds.items[i].key for i in ds.entries)
    assert len(loader) == sum(math.ceil(n / 2) for n in
                              np.unique([str(b) for b in ds.entry_buckets()], return_counts=True)[1])


def test_sdxl_conditioning_matches_the_real_crop_and_flip(tmp_path, noise_image, data_cfg):
    d = tmp_path / "data"
    path = noise_image(d / "wide.png", 48, 32)
    cfg = data_cfg(d, random_crop=True, flip_aug=True, num_repeats=40)
    ds = build_dataset(cfg, scan_dataset(cfg), seed=5)
    original = Image.open(path).convert("RGB")
    flips, lefts = set(), set()
    for i in range(len(ds)):
        s = ds[i]
        assert s["original_size"] == (32, 48) and s["target_size"] == (32, 32)
        top, left = s["crop_top_left"]
        px = ((s["pixel_values"] + 1) * 127.5).round().byte().permute(1, 2, 0).numpy()
        plain = np.asarray(original)[top:top + 32, left:left + 32]
        mirrored = np.asarray(ImageOps.mirror(original))[top:top + 32, left:left + 32]
        is_plain, is_mirrored = np.array_equal(px, plain), np.array_equal(px, mirrored)
        assert is_plain or is_mirrored, (top, left)
        flips.add(is_mirrored and not is_plain)
        lefts.add(left)
    assert flips == {True, False} and len(lefts) > 3
