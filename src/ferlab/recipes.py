"""Training recipes: `study` reproduces the study literally, `fast` is ferlab's CPU-aware default.

A recipe fills in the settings the user did not give. `fast` decides from the hardware, the
architecture and the images themselves:
- image size: the images' own resolution rounded up to a multiple of 16, between 64 and 112
  px on a CPU (FER-style crops are small: ResNet-34 trains 4.4x faster at 112 px than at 224,
  8x at 64); the study's 224 on a GPU;
- channels_last memory format on a CPU (1.5-2x faster training), except for VGG (0.8x);
- the frozen phase trains the head for 4 epochs on cached features of the frozen body (see
  train.py), computed for two augmented views, so augmentation stays on;
- the body's BatchNorm layers keep their ImageNet statistics when it unfreezes;
- decoded images are cached on disk by content, so a second run skips decoding.
`study` is the study's fastai setup: 224 px, its augmentation (vertical flips included),
1 frozen + 3 unfrozen epochs, batch 64, BatchNorm training in the frozen body, nothing cached.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ferlab.config import RunConfig

__all__ = [
    "RECIPES", "Recipe", "apply_recipe", "choose_image_size", "native_size", "override", "resolve_recipe",
]

RECIPES = ("fast", "study")
SIZE_SAMPLE = 64  # files whose headers are read to estimate the data's resolution


@dataclass(frozen=True)
class Recipe:
    """The settings a recipe supplies; explicit command-line values override each."""

    name: str
    image_size: int
    batch_size: int
    freeze_epochs: int
    epochs: int
    lr: float
    channels_last: bool
    cache_features: bool
    train_bn: bool
    keep_bn_statistics: bool
    flip_vertical: bool
    decode_cache: bool


def native_size(paths: Sequence[Path], sample: int = SIZE_SAMPLE) -> int | None:
    """Median shorter side of an evenly spaced sample of the images (headers only)."""
    if not paths:
        return None
    step = max(1, len(paths) // sample)
    sides = []
    for path in list(paths)[::step][:sample]:
        try:
            with Image.open(path) as image:
                sides.append(min(image.size))
        except (OSError, ValueError, SyntaxError):
            continue  # unreadable files are reported later by decoding; here they just don't count
    return int(statistics.median(sides)) if sides else None


def choose_image_size(device: torch.device, native: int | None) -> int:
    """The training size for `fast`: 224 on a GPU; on a CPU the data's own size, 64 to 112 px."""
    if device.type != "cpu":
        return 224
    if native is None:
        return 112
    return min(112, max(64, 16 * math.ceil(native / 16)))


def resolve_recipe(name: str, device: torch.device, arch: str, native: int | None) -> Recipe:
    """The recipe `name` for this device, architecture and data resolution."""
    if name == "study":
        return Recipe(
            name="study", image_size=224, batch_size=64, freeze_epochs=1, epochs=3, lr=2e-3,
            channels_last=False, cache_features=False, train_bn=True, keep_bn_statistics=False,
            flip_vertical=True,
            decode_cache=False,
        )
    if name != "fast":
        raise ValueError(f"unknown recipe {name!r}; choose from {', '.join(RECIPES)}")
    return Recipe(
        name="fast",
        image_size=choose_image_size(device, native),
        batch_size=64,
        # On cached features an extra head epoch costs seconds, not a body pass: 4 epochs over
        # the 2 augmented views give the head twice fastai's one epoch for the same cost.
        freeze_epochs=4,
        epochs=3,
        lr=2e-3,
        channels_last=device.type == "cpu" and not arch.startswith("vgg"),
        cache_features=True,
        train_bn=False,
        keep_bn_statistics=True,  # see TrainConfig: no accuracy drop when the body unfreezes
        flip_vertical=False,
        decode_cache=True,
    )


def override(recipe: Recipe, **values: Any) -> Recipe:
    """`recipe` with the values that were given (not None) in place of its own."""
    return dataclasses.replace(recipe, **{k: v for k, v in values.items() if v is not None})


def apply_recipe(recipe: Recipe, config: RunConfig) -> RunConfig:
    """`config` with every setting the recipe governs taken from `recipe`."""
    return dataclasses.replace(
        config,
        data=dataclasses.replace(
            config.data, image_size=recipe.image_size, batch_size=recipe.batch_size,
            decode_cache=recipe.decode_cache,
        ),
        train=dataclasses.replace(
            config.train, freeze_epochs=recipe.freeze_epochs, epochs=recipe.epochs, lr=recipe.lr,
            channels_last=recipe.channels_last, cache_features=recipe.cache_features,
            train_bn=recipe.train_bn, keep_bn_statistics=recipe.keep_bn_statistics,
        ),
        augment=dataclasses.replace(config.augment, flip_vertical=recipe.flip_vertical),
        recipe=recipe.name,
    )
