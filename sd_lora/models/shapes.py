"""Procedural coloured-shape images and captions, and the statistics that check them.

The built-in tiny base model (`builtin:tiny`) was trained on this corpus, the demo style set
(`datasets_example/`) is drawn with it, and the tests measure generated images with
`dominant_shape_colour` and `style_statistic`. Everything is deterministic given a seed.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

__all__ = [
    "PALETTE", "SHAPE_COLOURS", "SHAPES", "SIZES", "POSITIONS", "TRIGGER",
    "INK_RGB", "ShapeSpec", "random_spec", "render", "caption", "corpus_words", "corpus_sample", "style_sample",
    "autoencoder_sample", "centre_colour", "colour_names", "dominant_shape_colour", "style_statistic",
]

# Far apart in RGB so a colour survives a small VAE and is easy to classify back. No black:
# a near-black ground is what the demo style adds, so the base model must never have seen it.
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 40),
    "green": (40, 170, 60),
    "blue": (40, 80, 230),
    "yellow": (245, 215, 40),
    "purple": (150, 60, 200),
    "orange": (250, 140, 30),
    "white": (245, 245, 245),
    "gray": (140, 140, 140),
}
SHAPE_COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "white")
SHAPES = ("circle", "square", "triangle", "star", "diamond")
# Fraction of the image width the shape's bounding box spans.
SIZES = {"small": 0.38, "large": 0.66}
POSITIONS = ("top left", "top", "top right", "left", "center", "right", "bottom left", "bottom", "bottom right")
TRIGGER = "sdlstyle"
INK_RGB = (25, 20, 30)  # the demo style's night-sky ground
_SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapeSpec:
    """One picture: a shape over a plain (`background2=None`) or two-tone background."""

    shape: str
    colour: str
    size: str
    position: str
    background: str
    background2: str | None = None
    split: str = "vertical"
    outline: float = 0.0  # outline width as a fraction of the image width; 0 = none


def random_spec(rng: random.Random) -> ShapeSpec:
    """A random corpus picture; the shape colour always differs from the background."""
    colour = rng.choice(SHAPE_COLOURS)
    backgrounds = [c for c in PALETTE if c != colour]
    bg = rng.choice(backgrounds)
    bg2 = rng.choice([c for c in backgrounds if c != bg]) if rng.random() < 0.3 else None
    return ShapeSpec(rng.choice(SHAPES), colour, rng.choice(tuple(SIZES)), rng.choice(POSITIONS), bg, bg2,
                     rng.choice(("vertical", "horizontal")))


def _centre(spec: ShapeSpec, size: float) -> tuple[float, float]:
    half = SIZES[spec.size] * size / 2
    margin = size * 0.04 + half
    pick = {"left": margin, "right": size - margin, "top": margin, "bottom": size - margin}
    words = spec.position.split()
    cx = next((pick[w] for w in words if w in ("left", "right")), size / 2)
    cy = next((pick[w] for w in words if w in ("top", "bottom")), size / 2)
    return cx, cy


def _polygon(shape: str, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    if shape == "square":
        k = r * 0.86
        return [(cx - k, cy - k), (cx + k, cy - k), (cx + k, cy + k), (cx - k, cy + k)]
    if shape == "diamond":
        return [(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)]
    if shape == "triangle":
        return [(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)]
    pts = []  # star: five points, inner radius 0.45 r
    for i in range(10):
        rad = r if i % 2 == 0 else r * 0.45
        a = -math.pi / 2 + i * math.pi / 5
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def _rgb(colour) -> tuple[int, int, int]:
    return PALETTE[colour] if isinstance(colour, str) else tuple(colour)


def render(spec: ShapeSpec, size: int = 32, outline_rgb=INK_RGB) -> Image.Image:
    """Draw `spec` as a `size`-pixel RGB image (anti-aliased by supersampling)."""
    big = size * _SUPERSAMPLE
    img = Image.new("RGB", (big, big), _rgb(spec.background))
    draw = ImageDraw.Draw(img)
    if spec.background2 is not None:
        box = (big // 2, 0, big, big) if spec.split == "vertical" else (0, big // 2, big, big)
        draw.rectangle(box, fill=_rgb(spec.background2))
    cx, cy = _centre(spec, big)
    r = SIZES[spec.size] * big / 2
    width = round(spec.outline * big)
    ink = tuple(outline_rgb) if width else None
    if spec.shape == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=_rgb(spec.colour), outline=ink, width=width)
    else:
        draw.polygon(_polygon(spec.shape, cx, cy, r), fill=_rgb(spec.colour), outline=ink, width=width)
    return img.resize((size, size), Image.Resampling.BOX)


def caption(spec: ShapeSpec, rng: random.Random | None = None, trigger: str | None = None) -> str:
    """'a small red circle at the top left on a blue background'; with `rng`, parts are dropped
    at random so short prompts ('a red circle') are in the corpus too."""
    keep = (lambda p: rng.random() < p) if rng is not None else (lambda p: True)
    words = ["a"] + ([spec.size] if keep(0.7) else []) + [spec.colour, spec.shape]
    if keep(0.7):
        words.append("in the center" if spec.position == "center" else f"at the {spec.position}")
    if keep(0.7):
        bg = spec.background if spec.background2 is None else f"{spec.background} and {spec.background2}"
        words.append(f"on a {bg} background")
    text = " ".join(words)
    return f"{trigger}, {text}" if trigger else text


def corpus_words() -> list[str]:
    """Every word a caption can contain (plus the demo trigger), for the tokenizer vocabulary."""
    words = {"a", "at", "the", "in", "on", "and", "background", TRIGGER, *PALETTE, *SHAPES, *SIZES}
    words.update(w for p in POSITIONS for w in p.split())
    return sorted(words)


def _rng(seed: int, index: int, salt: str) -> random.Random:
    return random.Random(f"{salt}:{seed}:{index}")


def corpus_sample(seed: int, index: int, size: int = 32) -> tuple[Image.Image, str]:
    """Item `index` of the base-model corpus drawn with `seed`: (image, caption)."""
    rng = _rng(seed, index, "corpus")
    spec = random_spec(rng)
    return render(spec, size), caption(spec, rng)


def style_sample(seed: int, index: int, size: int = 32) -> tuple[Image.Image, str]:
    """Item `index` of the demo style set ("night shapes"): corpus shapes on a near-black ground
    the base never saw. The trigger word goes last: the text encoder is causal, so the content
    words before it keep exactly the embeddings the base model learned."""
    rng = _rng(seed, index, "style")
    spec = random_spec(rng)
    spec = ShapeSpec(spec.shape, spec.colour, "large" if rng.random() < 0.75 else "small", spec.position, INK_RGB)
    words = ["a", spec.size, spec.colour, spec.shape]
    words.append("in the center" if spec.position == "center" else f"at the {spec.position}")
    return render(spec, size), " ".join(words) + f", {TRIGGER}"


def autoencoder_sample(seed: int, index: int, size: int = 32) -> Image.Image:
    """A picture for training the autoencoder only. Half are corpus pictures, half use random RGB
    colours (dark ones included) with random outlines, so the VAE reconstructs any flat-colour
    drawing - a user's own style too. The UNet and text encoder never see these."""
    rng = _rng(seed, index, "vae")
    spec = random_spec(rng)
    if rng.random() < 0.5:
        return render(spec, size)

    def colour():  # a random brightness first, so dark colours are as common as light ones
        k = rng.random()
        return tuple(int(rng.randrange(256) * k) for _ in range(3))

    spec = ShapeSpec(spec.shape, colour(), spec.size, spec.position, colour(),
                     colour() if rng.random() < 0.3 else None, spec.split, rng.choice((0.0, 0.04, 0.08, 0.12)))
    return render(spec, size, outline_rgb=colour())


def _as_array(image) -> np.ndarray:
    arr = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    return arr * 255.0 if arr.max() <= 1.0 else arr


# Hue bins (degrees) of the chromatic names; every palette colour falls well inside its own bin.
_HUES = (("red", 0, 18), ("orange", 18, 42), ("yellow", 42, 75), ("green", 75, 170), ("blue", 170, 255),
         ("purple", 255, 345), ("red", 345, 361))
_NAMES = ("ink", "gray", "white") + tuple(dict.fromkeys(n for n, _, _ in _HUES))


def colour_names(image) -> np.ndarray:
    """Per-pixel colour name index into `_NAMES`, by hue for saturated pixels (so a dark or pale
    green is still green) and by brightness for the rest (ink, gray, white)."""
    arr = _as_array(image) / 255.0
    mx, mn = arr.max(axis=-1), arr.min(axis=-1)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
    r, g, b = arr[..., 0], arr[..., 1], arr[..., 2]
    delta = np.maximum(mx - mn, 1e-6)
    hue = np.select([mx == r, mx == g], [((g - b) / delta) % 6, (b - r) / delta + 2], (r - g) / delta + 4) * 60
    labels = np.full(mx.shape, _NAMES.index("gray"))
    labels[mx > 0.8] = _NAMES.index("white")
    for name, lo, hi in _HUES:
        labels[(sat >= 0.3) & (hue >= lo) & (hue < hi)] = _NAMES.index(name)
    labels[mx < 0.2] = _NAMES.index("ink")
    return labels


def dominant_shape_colour(image) -> str | None:
    """Colour name of the shape in `image` (PIL image or HxWx3 array, 0-255 or 0-1).

    Pixels are named by hue (see `colour_names`); names that cover much of the 1-pixel border
    are background; the commonest other chromatic or white name is the shape's.
    """
    labels = colour_names(image)
    border = np.concatenate([labels[0], labels[-1], labels[1:-1, 0], labels[1:-1, -1]])
    counts = np.bincount(border, minlength=len(_NAMES))
    background = {int(counts.argmax())} | {i for i, c in enumerate(counts) if c >= 0.3 * border.size}
    inner = labels[1:-1, 1:-1].ravel()
    keep = ~np.isin(inner, list(background | {_NAMES.index("ink"), _NAMES.index("gray")}))
    if not keep.any():
        return None
    return _NAMES[int(np.bincount(inner[keep]).argmax())]


def centre_colour(image, fraction: float = 0.5) -> str | None:
    """Colour name of a large, centred shape: the commonest chromatic or white name in the central
    `fraction` of the image (ink and gray are ground, never the shape).

    For prompts such as "a large red circle" (no position) the shape sits in the middle and often
    reaches the border, where `dominant_shape_colour`'s border-based background guess can take the
    shape itself for the ground; the centre is the shape whatever the ground is.
    """
    labels = colour_names(image)
    h, w = labels.shape
    dh, dw = max(1, round(h * fraction / 2)), max(1, round(w * fraction / 2))
    centre = labels[h // 2 - dh:h // 2 + dh, w // 2 - dw:w // 2 + dw].ravel()
    centre = centre[~np.isin(centre, [_NAMES.index("ink"), _NAMES.index("gray")])]
    if not centre.size:
        return None
    return _NAMES[int(np.bincount(centre).argmax())]


def style_statistic(images: Iterable, frame: int = 3) -> float:
    """Ground darkness: mean of 1 - max(R, G, B) / 255 over each image's outer `frame` pixels.

    The frame is almost all background. The base corpus has no dark ground (its darkest, gray,
    scores 0.45; most score 0.1-0.2), the demo "night" style paints it near-black (about 0.9),
    so the value moves from the base's towards the style set's as a style LoRA takes hold,
    whatever colour the shape in the middle is.
    """
    values = []
    for im in images:
        arr = _as_array(im)
        ring = np.ones(arr.shape[:2], dtype=bool)
        ring[frame:-frame, frame:-frame] = False
        values.append(float(1.0 - arr.max(axis=-1)[ring].mean() / 255.0))
    if not values:
        raise ValueError("style_statistic needs at least one image")
    return float(np.mean(values))
