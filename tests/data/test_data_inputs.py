"""Bad and unusual inputs: each is skipped with a named warning, converted correctly, or a clear error."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from sd_lora.config.data import DataConfig, SubsetConfig
from sd_lora.data import build_dataset, scan_dataset
from sd_lora.data import images as images_mod
from sd_lora.data.images import BadImage, load_rgb
from sd_lora.errors import SdLoraError


def first_sample(cfg, seed=0):
    return build_dataset(cfg, scan_dataset(cfg), seed=seed)[0]


def to_uint8(pixel_values):
    """[3, H, W] in [-1, 1] -> [H, W, 3] ints."""
    return ((pixel_values + 1) * 127.5).round().permute(1, 2, 0).numpy().astype(int)


def write_huge_png(path, size=20000):
    """A valid single-colour 1-bit PNG of size x size pixels, written without holding it in memory."""
    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    row = b"\x00" + b"\xff" * ((size + 7) // 8)
    comp = zlib.compressobj(9)
    idat = b"".join(comp.compress(row) for _ in range(size)) + comp.flush()
    header = struct.pack(">IIBBBBB", size, size, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_missing_data_dir_names_the_path(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(SdLoraError, match="data.dir.*nope.*does not exist"):
        scan_dataset(DataConfig(dir=str(missing)))


def test_unset_data_dir_is_an_error():
    with pytest.raises(SdLoraError, match="set data.dir"):
        scan_dataset(DataConfig())


def test_empty_data_dir_names_the_path(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not an image")
    with pytest.raises(SdLoraError, match="no usable training images in .*empty"):
        scan_dataset(DataConfig(dir=str(tmp_path / "empty")))


def test_bad_files_are_skipped_with_named_warnings_and_counted(tmp_path, noise_image):
    d = tmp_path / "data"
    noise_image(d / "good.png", 32, 32, caption="good")
    (d / "zero.png").write_bytes(b"")
    (d / "text.png").write_text("this is not a png")
    full_png = noise_image(tmp_path / "full.png", 64, 64).read_bytes()
    (d / "cut.png").write_bytes(full_png[: len(full_png) // 2])
    noise_image(tmp_path / "full.jpg", 64, 64)
    full_jpg = (tmp_path / "full.jpg").read_bytes()
    (d / "cut.jpg").write_bytes(full_jpg[: len(full_jpg) // 2])
    scan = scan_dataset(DataConfig(dir=str(d), resolution=32))
    skipped = sorted(p.name for p, _ in scan.skipped)
    assert skipped == ["cut.jpg", "cut.png", "text.png", "zero.png"]
    # one warning (printed once by the caller) names every skipped file with its reason
    (summary,) = [w for w in scan.warnings if "skipped 4" in w]
    for path, why in scan.skipped:
        assert f"{path}: {why}" in summary
    assert [r.path.name for s in scan.subsets for r in s.records] == ["good.png"]


def test_all_files_bad_is_an_error_mentioning_the_skips(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "zero.png").write_bytes(b"")
    with pytest.raises(SdLoraError, match="1 file\\(s\\) skipped"):
        scan_dataset(DataConfig(dir=str(d)))


def test_huge_image_is_refused_without_decoding(tmp_path, noise_image):
    d = tmp_path / "data"
    noise_image(d / "ok.png", 32, 32)
    huge = write_huge_png(d / "huge.png")
    scan = scan_dataset(DataConfig(dir=str(d), resolution=32))
    assert [(p.name, "too large" in why) for p, why in scan.skipped] == [("huge.png", True)]
    with pytest.raises(BadImage, match="too large"):
        load_rgb(huge, min_size=(32, 32))


def test_large_jpeg_is_decoded_at_reduced_scale(tmp_path, noise_image, data_cfg, monkeypatch):
    monkeypatch.setattr(images_mod, "MAX_DECODE_PIXELS", 100 * 100)
    path = noise_image(tmp_path / "data" / "big.jpg", 400, 400)
    scan = scan_dataset(data_cfg(tmp_path / "data"))
    assert not scan.skipped
    assert max(load_rgb(path, min_size=(32, 32)).size) <= 100
    assert first_sample(data_cfg(tmp_path / "data"))["pixel_values"].shape == (3, 32, 32)


def test_16bit_png_is_scaled_to_8_bits(tmp_path, data_cfg):
    d = tmp_path / "data"
    d.mkdir()
    Image.fromarray(np.full((32, 32), 32896, dtype=np.uint16)).save(d / "deep.png")
    assert Image.open(d / "deep.png").mode in ("I", "I;16")
    px = to_uint8(first_sample(data_cfg(d))["pixel_values"])
    assert np.abs(px - 128).max() <= 1  # 32896 / 65535 of full scale


def test_cmyk_jpeg_becomes_rgb(tmp_path, data_cfg):
    d = tmp_path / "data"
    d.mkdir()
    Image.new("CMYK", (32, 32), (0, 255, 255, 0)).save(d / "red.jpg", quality=95)  # pure red in CMYK
    px = to_uint8(first_sample(data_cfg(d))["pixel_values"])
    assert np.abs(px[16, 16] - [255, 0, 0]).max() <= 12


def test_rgba_png_is_composited_on_white(tmp_path, data_cfg):
    d = tmp_path / "data"
    d.mkdir()
    arr = np.zeros((32, 32, 4), dtype=np.uint8)
    arr[:, :16] = [255, 0, 0, 0]  # fully transparent red: must become white
    arr[:, 16:] = [0, 0, 0, 128]  # half-transparent black: mid grey on white
    Image.fromarray(arr, "RGBA").save(d / "alpha.png")
    px = to_uint8(first_sample(data_cfg(d))["pixel_values"])
    assert np.abs(px[10, 4] - [255, 255, 255]).max() <= 2
    expected_grey = 255 * (1 - 128 / 255)
    assert np.abs(px[10, 28] - expected_grey).max() <= 2


def test_palette_and_grayscale_images_load_as_rgb(tmp_path, data_cfg):
    d = tmp_path / "data"
    d.mkdir()
    Image.new("L", (32, 32), 77).save(d / "gray.png")
    pal = Image.new("P", (32, 32), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * (256 * 3 - 6))  # index 1 = (10, 200, 30)
    pal.save(d / "pal.png")
    ds = build_dataset(data_cfg(d), scan_dataset(data_cfg(d)))
    by_name = {s["key"].rsplit("/", 1)[-1]: to_uint8(s["pixel_values"]) for s in (ds[0], ds[1])}
    assert np.abs(by_name["gray.png"][5, 5] - 77).max() <= 1
    assert np.abs(by_name["pal.png"][5, 5] - [10, 200, 30]).max() <= 1


def test_exif_orientation_is_applied(tmp_path, data_cfg):
    d = tmp_path / "data"
    d.mkdir()
    stored = np.zeros((32, 64, 3), dtype=np.uint8)
    stored[:, :32] = [255, 0, 0]  # stored left half red ...
    stored[:, 32:] = [0, 0, 255]  # ... right half blue
    exif = Image.Exif()
    exif[0x0112] = 6  # "0th column is the visual top": the stored left edge is displayed on top
    Image.fromarray(stored).save(d / "rot.jpg", exif=exif, quality=95)
    cfg = data_cfg(d)
    record = scan_dataset(cfg).subsets[0].records[0]
    assert (record.width, record.height) == (32, 64)
    sample = first_sample(cfg)
    assert sample["original_size"] == (64, 32)
    px = to_uint8(sample["pixel_values"])  # centre 32x32 window of the displayed 32x64 image
    assert np.abs(px[2, 16] - [255, 0, 0]).max() <= 40
    assert np.abs(px[29, 16] - [0, 0, 255]).max() <= 40


def test_missing_caption_is_empty_with_a_warning(tmp_path, noise_image, data_cfg):
    d = tmp_path / "data"
    noise_image(d / "a.png", 32, 32, caption="a cat")
    noise_image(d / "b.png", 32, 32)
    scan = scan_dataset(data_cfg(d))
    captions = {r.path.name: r.caption for r in scan.subsets[0].records}
    assert captions == {"a.png": "a cat", "b.png": ""}
    assert any("1 image(s) have no caption" in w and "b.png" in w for w in scan.warnings)


def test_non_numeric_repeat_folder_is_a_clear_error(tmp_path, noise_image):
    noise_image(tmp_path / "data" / "x_name" / "a.png", 32, 32)
    with pytest.raises(SdLoraError, match="'x_name'.*'x' is not a number of repeats.*10_name"):
        scan_dataset(DataConfig(dir=str(tmp_path / "data")))


def test_missing_subset_dir_names_the_subset(tmp_path, noise_image):
    noise_image(tmp_path / "data" / "a.png", 32, 32)
    cfg = DataConfig(dir=str(tmp_path / "data"), subsets=[SubsetConfig(dir=str(tmp_path / "gone"))])
    with pytest.raises(SdLoraError, match=r"data.subsets\[0\].dir .*gone.* does not exist"):
        scan_dataset(cfg)


def test_broken_metadata_line_reports_its_number(tmp_path, noise_image):
    d = tmp_path / "data"
    noise_image(d / "a.png", 32, 32)
    (d / "metadata.jsonl").write_text('{"file_name": "a.png", "text": "fine"}\n{"file_name": "b.png", "te\n')
    with pytest.raises(SdLoraError, match="metadata.jsonl:2: not valid JSON"):
        scan_dataset(DataConfig(dir=str(d)))


def test_center_crop_of_a_wide_image(tmp_path, data_cfg):
    d = tmp_path / "data"
    d.mkdir()
    arr = np.zeros((32, 96, 3), dtype=np.uint8)
    arr[:, :32] = [255, 0, 0]
    arr[:, 32:64] = [0, 255, 0]  # the middle third is what a centre crop keeps
    arr[:, 64:] = [0, 0, 255]
    Image.fromarray(arr).save(d / "wide.png")
    sample = first_sample(data_cfg(d))
    px = to_uint8(sample["pixel_values"])
    assert px.shape == (32, 32, 3)
    assert np.abs(px[:, 2:30] - [0, 255, 0]).max() <= 3
    assert sample["crop_top_left"] == (0, 32) and sample["target_size"] == (32, 32)


def test_short_side_resize_scales_to_resolution(tmp_path, noise_image, data_cfg):
    noise_image(tmp_path / "data" / "big.png", 128, 64)
    sample = first_sample(data_cfg(tmp_path / "data"))
    assert sample["pixel_values"].shape == (3, 32, 32)
    assert -1.0 <= sample["pixel_values"].min() and sample["pixel_values"].max() <= 1.0
    assert sample["crop_top_left"] == (0, 16)  # 128x64 -> 64x32, centre window starts at x = (64 - 32) / 2


def test_jpeg_with_data_appended_after_the_image_is_kept(tmp_path, noise_image):
    d = tmp_path / "data"
    path = noise_image(d / "motion.jpg", 32, 32)
    path.write_bytes(path.read_bytes() + b"\x00ftypmp42" + bytes(4096))  # like a phone's motion-photo trailer
    scan = scan_dataset(DataConfig(dir=str(d), resolution=32))
    assert not scan.skipped and len(scan.subsets[0].records) == 1
