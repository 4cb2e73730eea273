"""The WD-style ONNX tagger: thresholds, character threshold, lists, underscores, rating, colour order, batching."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sd_lora.captioning.captioner import CaptionerSettings, load_captioner
from sd_lora.captioning.wd_tagger import Tag, select_tags
from sd_lora.errors import SdLoraError
from tests.captioning import tiny_captioners

RED, BLUE = Image.new("RGB", (20, 20), (255, 0, 0)), Image.new("RGB", (20, 20), (0, 0, 255))


def _tagger(folder: Path, **settings):
    return load_captioner(CaptionerSettings(backend="wd14", model=str(folder), **settings))


def test_default_thresholds_and_order(tiny_tagger_dir):
    # character tags first (0.90 >= 0.85; 0.60 is not), then general tags by confidence (>= 0.35), no rating
    assert _tagger(tiny_tagger_dir).caption([RED]) == [
        "hatsune miku, red theme, long hair, ^_^, smile, blurry"]


def test_images_reach_the_model_in_bgr_order(tiny_tagger_dir):
    out = _tagger(tiny_tagger_dir, threshold=0.95).caption([RED, BLUE])
    assert out == ["hatsune miku, red theme", "hatsune miku, blue theme"]


def test_thresholds_lists_underscores_and_rating(tiny_tagger_dir):
    tagger = _tagger(tiny_tagger_dir, threshold=0.4, character_threshold=0.5, blacklist=("long hair",),
                     replace_underscores=False, include_rating=True)
    assert tagger.caption([BLUE]) == ["hatsune_miku, kagamine_rin, blue_theme, ^_^, smile, general"]
    only = _tagger(tiny_tagger_dir, whitelist=("smile", "blurry", "red_theme"))
    assert only.caption([BLUE]) == ["smile, blurry"]


def test_select_tags_keeps_kaomoji_underscores():
    tags = [Tag("o_o", 0), Tag("open_mouth", 0)]
    assert select_tags(np.array([0.9, 0.8]), tags, CaptionerSettings(backend="wd14")) == ["o_o", "open mouth"]


def test_fixed_batch_graph_runs_image_by_image(tmp_path):
    folder = tiny_captioners.save_tiny_tagger(tmp_path / "fixed", fixed_batch=True)
    out = _tagger(folder, threshold=0.95).caption([RED, BLUE, RED])
    assert [c.split(", ")[1] for c in out] == ["red theme", "blue theme", "red theme"]


def test_mismatched_tag_list_is_one_error(tmp_path):
    folder = tiny_captioners.save_tiny_tagger(tmp_path / "bad")
    lines = (folder / "selected_tags.csv").read_text().splitlines()
    (folder / "selected_tags.csv").write_text("\n".join(lines[:-1]) + "\n")
    with pytest.raises(SdLoraError, match="different models"):
        _tagger(folder)


def test_bad_settings_are_listed_together():
    with pytest.raises(SdLoraError, match="batch size must be 1 or more.*threshold must be in") as e:
        CaptionerSettings(backend="wd14", threshold=1.5, batch_size=0)
    assert "backend" not in str(e.value)
