"""A generated folder of photo-like JPEGs: mixed sizes and aspect ratios, one sub-folder per class.

Stands in for a user's photos (or tf_flowers) where nothing can be downloaded: the profile tests
and the streaming benchmark run the real pipeline on it. A class is a shape (disc, bar, triangle,
ring, cross) drawn at a random place, scale and colour on a textured background, so a model must
find it wherever a crop puts it, and a 16 px thumbnail loses most of it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

SHAPES = ("disc", "bar", "triangle", "ring", "cross")


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, colour: tuple[int, ...]) -> None:
    if shape == "disc":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    elif shape == "bar":
        draw.rectangle([cx - r, cy - r / 3, cx + r, cy + r / 3], fill=colour)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
    elif shape == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=max(2, int(r / 3)))
    else:  # cross
        draw.rectangle([cx - r, cy - r / 4, cx + r, cy + r / 4], fill=colour)
        draw.rectangle([cx - r / 4, cy - r, cx + r / 4, cy + r], fill=colour)


def photo(shape: str, rng: np.random.Generator, min_side: int = 80, max_side: int = 360) -> Image.Image:
    """One RGB image of `shape`, of random size and aspect ratio (between 3:4 and 16:9)."""
    short = int(rng.integers(min_side, max_side + 1))
    aspect = float(rng.uniform(0.75, 1.78))
    w, h = (int(short * aspect), short) if rng.random() < 0.5 else (short, int(short * aspect))
    base = rng.integers(40, 200, 3)
    noise = rng.normal(0, 25, (h // 8 + 1, w // 8 + 1, 3))  # low-frequency texture, like a background
    bg = np.clip(base + noise, 0, 255).astype(np.uint8)
    img = Image.fromarray(bg, "RGB").resize((w, h), Image.BILINEAR)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(0, 3))):  # distractors: small blobs of other colours
        cx, cy, r = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.03, 0.08) * short
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    r = float(rng.uniform(0.18, 0.32)) * short
    cx, cy = rng.uniform(r, w - r), rng.uniform(r, h - r)
    colour = tuple(int(v) for v in (255 - base + rng.integers(-30, 31, 3)).clip(0, 255))
    _draw_shape(draw, shape, cx, cy, r, colour)
    return img.filter(ImageFilter.GaussianBlur(radius=float(rng.uniform(0.0, 1.2))))


def make_photo_folder(root: Path, per_class: int = 40, classes: int = 3, seed: int = 0, min_side: int = 80,
                      max_side: int = 360) -> Path:
    """<root>/<shape>/<i>.jpg for the first `classes` shapes; a few PNGs among them. Returns root."""
    if not 2 <= classes <= len(SHAPES):
        raise ValueError(f"classes={classes}; allowed: 2..{len(SHAPES)}")
    rng = np.random.default_rng(seed)
    for shape in SHAPES[:classes]:
        folder = Path(root) / shape
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = photo(shape, rng, min_side, max_side)
            if i % 10 == 9:
                img.save(folder / f"{i:04d}.png")
            else:
                img.save(folder / f"{i:04d}.jpg", quality=int(rng.integers(75, 96)))
    return Path(root)
