"""Dataset report data and page over a hand-made folder: duplicates, too-small images, missing captions, buckets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

from sd_lora.captioning.report import dataset_report_data, dhash, duplicate_groups
from sd_lora.captioning.report_html import render_report
from sd_lora.cli.main import main


def _noise(seed: int, size=(96, 64)) -> Image.Image:
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 255, (8, 12, 3), dtype=np.uint8)  # coarse blocks: a picture with structure
    return Image.fromarray(small).resize(size, Image.Resampling.BILINEAR)


def _folder(root: Path) -> Path:
    root.mkdir()
    _noise(1).save(root / "a.png")
    (root / "a.txt").write_text("ohwx, red <b>hat</b>")
    _noise(1, (192, 128)).save(root / "a_big_copy.jpg", quality=90)  # same picture, resized and re-encoded
    (root / "a_big_copy.txt").write_text("ohwx, hat")
    _noise(2, (64, 96)).save(root / "tall.png")  # no caption
    _noise(3, (20, 20)).save(root / "tiny.png")  # below a quarter of 256
    return root


def test_dhash_survives_resizing_but_not_another_picture():
    same = bin(dhash(_noise(1)) ^ dhash(_noise(1, (300, 200)))).count("1")
    other = bin(dhash(_noise(1)) ^ dhash(_noise(2))).count("1")
    assert same <= 4 and other >= 16


def test_duplicate_groups_link_transitively():
    a, b, c, d = (Path(x) for x in "abcd")
    hashes = {a: 0b0, b: 0b111, c: 0b111111, d: (1 << 63) - 1}
    assert duplicate_groups(hashes, max_distance=3) == [[a, b, c]]
    assert duplicate_groups(hashes, max_distance=2) == []


def test_report_data(tmp_path):
    report = dataset_report_data(_folder(tmp_path / "ds"), resolution=256, thumbnail=32)
    names = sorted(im.path.name for im in report.images)
    assert names == ["a.png", "a_big_copy.jpg", "tall.png"]
    assert [p.name for p, _ in report.too_small] == ["tiny.png"]
    assert [p.name for p in report.missing_captions] == ["tall.png"]
    assert [[p.name for p in g] for g in report.duplicates] == [["a.png", "a_big_copy.jpg"]]
    assert ("ohwx", 2) in report.tags and ("hat", 1) in report.tags
    by_name = {im.path.name: im for im in report.images}
    # 256^2 pixel budget, 64-pixel steps: 3:2 goes to 320x192, 2:3 to 192x320 (the closest aspect ratios)
    assert by_name["a.png"].bucket == (320, 192) and by_name["tall.png"].bucket == (192, 320)
    assert max(by_name["a.png"].thumbnail.size) == 32


def test_html_escapes_captions_and_marks_problems(tmp_path):
    page = render_report(dataset_report_data(_folder(tmp_path / "ds"), resolution=256, thumbnail=24))
    assert "red &lt;b&gt;hat&lt;/b&gt;" in page and "<b>hat</b>" not in page
    assert page.count("data:image/jpeg;base64,") == 3
    assert "tiny.png" in page and "too small" in page
    assert "a.png, a_big_copy.jpg" in page


def test_cli_writes_the_page(tmp_path, capsys):
    folder = _folder(tmp_path / "ds")
    assert main(["dataset-report", str(folder), "--resolution", "256", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["images"] == 3 and summary["too_small"] == 1 and summary["duplicate_groups"] == 1
    assert Path(summary["report"]) == folder / "dataset-report.html"
    assert (folder / "dataset-report.html").read_text().startswith("<!doctype html>")
    assert main(["dataset-report", str(tmp_path / "nope")]) == 2
