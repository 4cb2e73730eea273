"""CLIPSeg loss masks (tiny random model): shapes, value ranges, prompt union, threshold/invert/floor, the files
data.mask_dir reads, the contact sheet."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sd_lora.captioning.masks import MaskSettings, contact_sheet, load_masker, make_masks
from sd_lora.cli.main import main
from sd_lora.data.images import load_mask
from sd_lora.errors import SdLoraError


def _images(folder: Path) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (30, 40, 3), dtype=np.uint8)).save(folder / "wide.png")
    tall = Image.fromarray(rng.integers(0, 255, (40, 20, 3), dtype=np.uint8))
    exif = tall.getexif()
    exif[0x0112] = 6  # rotate 90: displayed 40 wide, 20 tall
    tall.save(folder / "rotated.jpg", exif=exif)
    return folder


def _masker(model: Path, **kw):
    return load_masker(MaskSettings(prompts=kw.pop("prompts", ("person",)), model=str(model), **kw))


def test_soft_masks_at_display_size_read_back_by_the_loader(tmp_path, tiny_clipseg_dir):
    folder = _images(tmp_path / "ds")
    report = make_masks(folder, tmp_path / "masks", _masker(tiny_clipseg_dir))
    assert len(report.written) == 2
    for stem, size in (("wide", (40, 30)), ("rotated", (40, 20))):
        # the same lookup the dataset does: same stem, any extension, in data.mask_dir
        found = sorted((tmp_path / "masks").glob(f"{glob.escape(stem)}.*"))
        assert [p.name for p in found] == [f"{stem}.png"]
        mask = load_mask(found[0], alpha=False)
        assert mask.mode == "L" and mask.size == size
        values = np.asarray(mask)
        assert values.min() < values.max()  # a soft mask has gray levels, not one value


def test_prompts_combine_by_maximum(tmp_path, tiny_clipseg_dir):
    im = [Image.effect_noise((40, 30), 60).convert("RGB")]
    person = _masker(tiny_clipseg_dir, prompts=("person",)).probabilities(im)[0]
    dog = _masker(tiny_clipseg_dir, prompts=("dog",)).probabilities(im)[0]
    both = _masker(tiny_clipseg_dir, prompts=("person", "dog")).probabilities(im)[0]
    np.testing.assert_allclose(both, np.maximum(person, dog), atol=1e-5)
    assert both.shape == (30, 40) and 0.0 <= both.min() and both.max() <= 1.0


def test_threshold_invert_and_floor(tmp_path, tiny_clipseg_dir):
    im = [Image.effect_noise((40, 30), 60).convert("RGB")]
    probs = _masker(tiny_clipseg_dir).probabilities(im)[0]
    cut = float(np.median(probs))
    hard = np.asarray(_masker(tiny_clipseg_dir, threshold=cut).masks(im)[0])
    np.testing.assert_array_equal(hard, np.where(probs >= cut, 255, 0))
    inverted = np.asarray(_masker(tiny_clipseg_dir, threshold=cut, invert=True).masks(im)[0])
    np.testing.assert_array_equal(inverted, 255 - hard)
    floored = np.asarray(_masker(tiny_clipseg_dir, threshold=cut, floor=0.2).masks(im)[0])
    assert set(np.unique(floored)) == {51, 255}


def test_existing_masks_are_kept_unless_overwrite(tmp_path, tiny_clipseg_dir):
    folder = _images(tmp_path / "ds")
    (tmp_path / "masks").mkdir()
    Image.new("L", (40, 30), 7).save(tmp_path / "masks" / "wide.png")
    report = make_masks(folder, tmp_path / "masks", _masker(tiny_clipseg_dir))
    assert [p.name for p in report.kept] == ["wide.png"]
    assert np.asarray(Image.open(tmp_path / "masks" / "wide.png")).max() == 7
    make_masks(folder, tmp_path / "masks", _masker(tiny_clipseg_dir), overwrite=True)
    assert np.asarray(Image.open(tmp_path / "masks" / "wide.png")).max() != 7


def test_masks_never_go_into_the_image_folder(tmp_path, tiny_clipseg_dir):
    folder = _images(tmp_path / "ds")
    with pytest.raises(SdLoraError, match="own folder"):
        make_masks(folder, folder, _masker(tiny_clipseg_dir))


def test_contact_sheet_has_a_row_per_masked_image(tmp_path, tiny_clipseg_dir):
    folder = _images(tmp_path / "ds")
    make_masks(folder, tmp_path / "masks", _masker(tiny_clipseg_dir))
    sheet = Image.open(contact_sheet(folder, tmp_path / "masks", tmp_path / "sheet.jpg", thumb=50))
    assert sheet.size == (3 * 54 + 4, 2 * 54 + 4)
    with pytest.raises(SdLoraError, match="no masks"):
        contact_sheet(folder, tmp_path / "empty", tmp_path / "x.jpg")


def test_cli_writes_masks_and_sheet(tmp_path, tiny_clipseg_dir, capsys):
    folder = _images(tmp_path / "ds")
    assert main(["masks", str(folder), "--prompt", "person", "--model", str(tiny_clipseg_dir), "--sheet"]) == 0
    assert sorted(p.name for p in (folder / "masks").iterdir()) == ["contact_sheet.jpg", "rotated.png", "wide.png"]
    assert f'data.mask_dir = "{folder / "masks"}"' in capsys.readouterr().out
    assert main(["masks", str(folder), "--prompt", " ", "--model", str(tiny_clipseg_dir)]) == 2
