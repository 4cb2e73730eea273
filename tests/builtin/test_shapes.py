"""The procedural corpus, the demo style set and the statistics the learning tests rely on."""

from __future__ import annotations

import random
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sd_lora.models import shapes

REPO = Path(__file__).resolve().parents[2]
DEMO_DIR = REPO / "datasets_example" / "night_shapes"


def test_corpus_is_deterministic_and_varied():
    a = [shapes.corpus_sample(3, i) for i in range(20)]
    b = [shapes.corpus_sample(3, i) for i in range(20)]
    assert all(np.array_equal(np.asarray(x[0]), np.asarray(y[0])) and x[1] == y[1] for x, y in zip(a, b))
    other = shapes.corpus_sample(4, 0)
    assert not (np.array_equal(np.asarray(a[0][0]), np.asarray(other[0])) and a[0][1] == other[1])
    assert len({c for _, c in a}) > 15


def test_caption_describes_the_spec():
    spec = shapes.ShapeSpec("star", "red", "small", "top left", "blue")
    assert shapes.caption(spec) == "a small red star at the top left on a blue background"
    two_tone = shapes.ShapeSpec("circle", "green", "large", "center", "white", "gray")
    assert shapes.caption(two_tone, trigger="sdlstyle") == \
        "sdlstyle, a large green circle in the center on a white and gray background"


def test_corpus_words_cover_every_caption():
    words = set(shapes.corpus_words())
    for i in range(200):
        _, text = shapes.corpus_sample(0, i)
        assert set(text.split()) <= words, text


@pytest.mark.parametrize("seed", [0, 1])
def test_dominant_colour_recovers_the_drawn_colour(seed):
    rng = random.Random(seed)
    for _ in range(60):
        spec = shapes.random_spec(rng)
        assert shapes.dominant_shape_colour(shapes.render(spec)) == spec.colour, spec


def test_dominant_colour_accepts_float_arrays_and_survives_an_outline():
    spec = shapes.ShapeSpec("square", "blue", "large", "center", "yellow", outline=0.08)
    arr = np.asarray(shapes.render(spec), dtype=np.float32) / 255.0
    assert shapes.dominant_shape_colour(arr) == "blue"


def test_dominant_colour_is_none_without_a_shape():
    flat = Image.new("RGB", (32, 32), shapes.PALETTE["green"])
    assert shapes.dominant_shape_colour(flat) is None


def test_style_statistic_separates_style_from_corpus():
    base = shapes.style_statistic(shapes.corpus_sample(0, i)[0] for i in range(64))
    style = shapes.style_statistic(shapes.style_sample(0, i)[0] for i in range(64))
    assert base < 0.3 < 0.8 < style
    half = [shapes.corpus_sample(0, i)[0] for i in range(32)] + [shapes.style_sample(0, i)[0] for i in range(32)]
    assert base < shapes.style_statistic(half) < style


def test_style_statistic_reads_the_ground_not_the_shape():
    on_white = shapes.ShapeSpec("circle", "red", "large", "center", "white")
    black = Image.new("RGB", (32, 32), shapes.INK_RGB)
    assert shapes.style_statistic([shapes.render(on_white)]) < 0.1
    assert shapes.style_statistic([black]) > 0.85
    assert shapes.style_statistic([np.asarray(black, dtype=np.float32) / 255.0]) > 0.85


def test_style_statistic_needs_images():
    with pytest.raises(ValueError):
        shapes.style_statistic([])


def test_style_captions_keep_the_content_words_first():
    for i in range(20):
        _, text = shapes.style_sample(0, i)
        content, trigger = text.rsplit(", ", 1)
        assert trigger == shapes.TRIGGER
        assert set(content.split()) <= set(shapes.corpus_words())


def test_demo_dataset_is_committed_small_and_captioned_with_the_trigger():
    images = sorted(DEMO_DIR.glob("*.png"))
    assert 16 <= len(images) <= 40
    assert sum(p.stat().st_size for p in DEMO_DIR.iterdir()) < 1_000_000
    for path in images:
        caption = path.with_suffix(".txt").read_text(encoding="utf-8").strip()
        assert caption.endswith(", " + shapes.TRIGGER)
        with Image.open(path) as im:
            assert im.size == (32, 32)
            assert shapes.dominant_shape_colour(im) == caption.split()[2]


def test_demo_dataset_script_reproduces_the_committed_files(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        import make_demo_dataset
    finally:
        sys.path.pop(0)
    paths = make_demo_dataset.write_style_set(tmp_path, count=len(list(DEMO_DIR.glob("*.png"))))
    for path in paths:
        committed = DEMO_DIR / path.name
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(committed)))
        assert path.with_suffix(".txt").read_text() == committed.with_suffix(".txt").read_text()


def test_autoencoder_pictures_are_deterministic_and_include_outlines():
    a = [np.asarray(shapes.autoencoder_sample(0, i)) for i in range(40)]
    b = [np.asarray(shapes.autoencoder_sample(0, i)) for i in range(40)]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    inked = [bool((x.max(axis=-1) < 60).any()) for x in a]
    assert any(inked) and not all(inked)


def test_colour_names_go_by_hue_so_shades_keep_their_name():
    names = shapes._NAMES
    for name, rgb in shapes.PALETTE.items():
        assert names[shapes.colour_names(np.array([[rgb]], dtype=np.uint8))[0, 0]] == name
    shades = {"green": [(20, 70, 30), (140, 230, 150)], "red": [(120, 10, 20)], "blue": [(10, 30, 110)],
              "ink": [(10, 10, 10), shapes.INK_RGB]}
    for name, rgbs in shades.items():
        for rgb in rgbs:
            assert names[shapes.colour_names(np.array([[rgb]], dtype=np.uint8))[0, 0]] == name, rgb


def test_a_shape_touching_the_border_is_not_taken_for_background():
    spec = shapes.ShapeSpec("square", "red", "large", "top left", "blue")
    arr = np.asarray(shapes.render(spec)).copy()
    arr[:12, :1] = shapes.PALETTE["red"]  # the shape now reaches the border over a stretch
    arr[:1, :12] = shapes.PALETTE["red"]
    assert shapes.dominant_shape_colour(arr) == "red"


def test_centre_colour_reads_a_large_centred_shape_whatever_the_ground():
    for ground in ("blue", "white", "gray"):
        spec = shapes.ShapeSpec("circle", "red", "large", "center", ground)
        assert shapes.centre_colour(shapes.render(spec)) == "red", ground
    # a shape filling most of the frame on a dark ground (where a border guess fails)
    arr = np.zeros((32, 32, 3), dtype=np.uint8)
    arr[2:30, 2:30] = shapes.PALETTE["green"]
    arr[0, :] = shapes.PALETTE["green"]
    assert shapes.centre_colour(arr) == "green"
    # a dark ground with no shape in the middle has no shape colour
    arr = np.zeros((32, 32, 3), dtype=np.uint8)
    arr[:4, :4] = shapes.PALETTE["red"]
    assert shapes.centre_colour(arr) is None
