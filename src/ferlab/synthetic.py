"""Procedurally drawn face-expression images for the demo and the tests.

Each face is an ellipse whose mouth, brows and eyes encode one of the study's five
expressions (angry, happy, neutral, sad, surprise); pose (rotation, position), size, skin and
background colour and pixel noise are random. The task is easy for a person and not trivial
for a network trained on a few hundred of them, which is what a demo needs.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["EXPRESSIONS", "draw_face", "generate_dataset"]

EXPRESSIONS = ("angry", "happy", "neutral", "sad", "surprise")
SUPERSAMPLE = 4  # draw large, then downsample: smooth edges at small sizes


def _brows(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, expression: str, rng: np.random.Generator, colour: tuple[int, ...]) -> None:
    """Eyebrows: angry slant down to the nose, sad slant up, surprise raised high."""
    lift = {"surprise": 0.42, "happy": 0.33, "sad": 0.3, "neutral": 0.3, "angry": 0.26}[expression]
    slant = {"angry": -0.12, "sad": 0.12, "surprise": 0.0, "neutral": 0.0, "happy": 0.02}[expression]
    slant += rng.normal(0, 0.015)
    width = max(2, int(r * 0.07))
    for side in (-1, 1):
        outer = (cx + side * r * 0.55, cy - r * lift)
        inner = (cx + side * r * 0.15, cy - r * (lift + slant))
        draw.line([outer, inner], fill=colour, width=width)


def _eyes(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, expression: str, rng: np.random.Generator) -> None:
    height = {"surprise": 0.13, "happy": 0.045, "angry": 0.06, "sad": 0.08, "neutral": 0.08}[expression]
    height *= rng.uniform(0.85, 1.15)
    for side in (-1, 1):
        ex, ey = cx + side * r * 0.35, cy - r * 0.12
        draw.ellipse([ex - r * 0.11, ey - r * height, ex + r * 0.11, ey + r * height], fill=(250, 250, 250))
        pupil = r * min(0.06, height)
        draw.ellipse([ex - pupil, ey - pupil, ex + pupil, ey + pupil], fill=(30, 30, 40))


def _mouth(draw: ImageDraw.ImageDraw, cx: float, cy: float, r: float, expression: str, rng: np.random.Generator) -> None:
    my = cy + r * 0.45
    half = r * rng.uniform(0.3, 0.4)
    width = max(2, int(r * 0.07))
    colour = (120, 30, 40)
    if expression == "surprise":
        h = r * rng.uniform(0.16, 0.22)
        draw.ellipse([cx - half * 0.5, my - h, cx + half * 0.5, my + h], fill=(60, 10, 20))
    elif expression in ("happy", "sad"):
        depth = r * rng.uniform(0.15, 0.25)
        if expression == "happy":  # a smile: the lower half of an ellipse
            draw.arc([cx - half, my - depth, cx + half, my + depth], 10, 170, fill=colour, width=width)
        else:  # a frown: the upper half, lower on the face
            draw.arc([cx - half, my, cx + half, my + 2 * depth], 190, 350, fill=colour, width=width)
    elif expression == "angry":
        draw.line([(cx - half * 0.8, my + r * 0.05), (cx, my - r * 0.02), (cx + half * 0.8, my + r * 0.05)], fill=colour, width=width + 1)
    else:
        draw.line([(cx - half * 0.9, my), (cx + half * 0.9, my)], fill=colour, width=width)


def draw_face(expression: str, image_size: int, rng: np.random.Generator) -> Image.Image:
    """One RGB image (image_size x image_size) of a face showing `expression`."""
    if expression not in EXPRESSIONS:
        raise ValueError(f"unknown expression {expression!r}; choose from {EXPRESSIONS}")
    size = image_size * SUPERSAMPLE
    background = tuple(int(c) for c in rng.integers(0, 256, 3))
    canvas = Image.new("RGB", (size, size), background)
    # A soft gradient so the background is not a flat colour.
    ramp = np.linspace(-1, 1, size)[None, :, None] * rng.normal(0, 30, 3)[None, None, :]
    canvas = Image.fromarray(np.clip(np.asarray(canvas, dtype=np.float64) + ramp, 0, 255).astype(np.uint8))
    layer = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    r = size * rng.uniform(0.28, 0.4)
    cx = size / 2 + rng.uniform(-0.08, 0.08) * size
    cy = size / 2 + rng.uniform(-0.08, 0.08) * size
    tone = rng.uniform(0.35, 1.0)
    skin = (int(255 * tone), int(200 * tone), int(160 * tone), 255)
    draw.ellipse([cx - r * 0.82, cy - r, cx + r * 0.82, cy + r], fill=skin)
    hair = (*tuple(int(c) for c in rng.integers(0, 120, 3)), 255)
    _brows(draw, cx, cy, r, expression, rng, hair)
    _eyes(draw, cx, cy, r, expression, rng)
    _mouth(draw, cx, cy, r, expression, rng)
    angle = rng.uniform(-15, 15)
    layer = layer.rotate(angle, resample=Image.Resampling.BICUBIC, center=(cx, cy))
    canvas.paste(layer, (0, 0), layer)
    image = canvas.resize((image_size, image_size), Image.Resampling.LANCZOS)
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 0.8)))
    noise = rng.normal(0, rng.uniform(2, 10), (image_size, image_size, 3))
    return Image.fromarray(np.clip(np.asarray(image, dtype=np.float64) + noise, 0, 255).astype(np.uint8))


def generate_dataset(
    root: Path, per_class: int, image_size: int = 64, seed: int = 0,
    classes: tuple[str, ...] = EXPRESSIONS,
) -> dict[str, int]:
    """Write `per_class` PNGs per expression under root/<expression>/; returns the counts."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    digits = max(4, int(math.log10(max(1, per_class))) + 1)
    for expression in classes:
        folder = root / expression
        folder.mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            draw_face(expression, image_size, rng).save(folder / f"{expression}_{index:0{digits}d}.png")
    return {expression: per_class for expression in classes}
