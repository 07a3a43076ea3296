"""Photos with real faces for the detection, video and web-app tests: scikit-image's astronaut
and composites of her head at several sizes; and a tiny untrained model to label them."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from skimage import data as skimage_data

from ferlab.checkpoint import ModelCard, save_model
from ferlab.models import build_model, get_architecture

__all__ = ["ASTRONAUT_FACE", "composite", "iou", "paste_faces", "tiny_model"]

ASTRONAUT_FACE = (177, 66, 95, 95)  # x, y, w, h: where the cascade finds it, checked by eye


def iou(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    w = max(0, min(ax + aw, bx + bw) - max(ax, bx))
    h = max(0, min(ay + ah, by + bh) - max(ay, by))
    return w * h / (aw * ah + bw * bh - w * h)


def composite() -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """The astronaut's head pasted three times, at 150, 240 and 360 px, on a 1400x900 canvas
    of smooth noise; returns the photo and the expected face boxes, left to right."""
    astronaut = skimage_data.astronaut()
    x, y, w, h = ASTRONAUT_FACE
    head = Image.fromarray(astronaut[y - 45 : y + h + 45, x - 45 : x + w + 45])  # face plus margin
    rng = np.random.default_rng(0)
    noise = rng.normal(128, 30, (90, 140, 3)).clip(0, 255).astype(np.uint8)
    canvas = Image.fromarray(noise).resize((1400, 900), Image.Resampling.BILINEAR)
    boxes = []
    for left, top, side in ((60, 500, 150), (420, 120, 240), (900, 300, 360)):
        canvas.paste(head.resize((side, side), Image.Resampling.BILINEAR), (left, top))
        scale = side / head.width
        boxes.append((left + round(45 * scale), top + round(45 * scale), round(w * scale), round(h * scale)))
    return np.asarray(canvas), boxes


def tiny_model(folder: Path, class_names: tuple[str, ...] = ("happy", "sad")) -> Path:
    """An untrained resnet18 at 32 px saved as `folder`/model.safetensors (seeded: the same
    weights every time)."""
    torch.manual_seed(0)
    arch = get_architecture("resnet18")
    card = ModelCard(arch=arch.name, class_names=class_names, image_size=32, mean=arch.mean, std=arch.std,
                     metrics={"valid": {"accuracy": 0.5, "images": 10}})
    return save_model(build_model(arch.name, len(class_names)).eval(), card, folder / "model.safetensors")


def paste_faces(faces: list[Image.Image], seed: int, size: tuple[int, int] = (1280, 960)
                ) -> tuple[np.ndarray, list[tuple[int, int, int, int]]]:
    """`faces` upscaled to 90-260 px squares at random non-overlapping places on a canvas of
    smooth noise, through JPEG (quality 85); returns the photo and each face's square."""
    rng = np.random.default_rng(seed)
    width, height = size
    noise = rng.normal(128, 30, (height // 10, width // 10, 3)).clip(0, 255).astype(np.uint8)
    canvas = Image.fromarray(noise).resize(size, Image.Resampling.BILINEAR)
    boxes: list[tuple[int, int, int, int]] = []
    for face in faces:
        side = int(rng.integers(90, 261))
        while True:
            box = (int(rng.integers(0, width - side)), int(rng.integers(0, height - side)), side, side)
            if all(iou(box, other) == 0 for other in boxes):
                break
        boxes.append(box)
        canvas.paste(face.convert("RGB").resize((side, side), Image.Resampling.BICUBIC), box[:2])
    buffer = io.BytesIO()
    canvas.save(buffer, "JPEG", quality=85)
    return np.asarray(Image.open(buffer).convert("RGB")), boxes
