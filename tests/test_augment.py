from __future__ import annotations

import torch

from ferlab.augment import augment_batch, random_homographies
from ferlab.config import AugmentConfig

NOTHING = AugmentConfig(flip_horizontal=False, max_rotate=0, max_zoom=1.0, max_warp=0, max_lighting=0)


def _images(n: int = 6, size: int = 24) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_seeded_augmentation_is_reproducible() -> None:
    images = _images()
    first = augment_batch(images, AugmentConfig(), torch.Generator().manual_seed(3))
    again = augment_batch(images, AugmentConfig(), torch.Generator().manual_seed(3))
    other = augment_batch(images, AugmentConfig(), torch.Generator().manual_seed(4))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    assert first.shape == images.shape and first.dtype == torch.float32
    assert float(first.min()) >= 0.0 and float(first.max()) <= 1.0


def test_disabled_or_empty_augmentation_is_identity() -> None:
    images = _images()
    expected = images.float() / 255
    assert torch.equal(augment_batch(images, AugmentConfig(enabled=False)), expected)
    assert torch.allclose(augment_batch(images, NOTHING, torch.Generator().manual_seed(0)), expected)


def test_horizontal_flip_mirrors_exactly() -> None:
    images = _images(n=32)
    config = AugmentConfig(flip_horizontal=True, max_rotate=0, max_zoom=1.0, max_warp=0, max_lighting=0)
    generator = torch.Generator().manual_seed(1)
    matrices = random_homographies(32, config, torch.Generator().manual_seed(1))
    flipped = matrices[:, 0, 0] < 0
    assert 0 < int(flipped.sum()) < 32  # about half
    out = augment_batch(images, config, generator)
    expected = images.float() / 255
    assert torch.allclose(out[flipped], expected[flipped].flip(-1), atol=1e-5)
    assert torch.allclose(out[~flipped], expected[~flipped], atol=1e-5)


def test_vertical_flip_only_when_asked() -> None:
    off = random_homographies(64, AugmentConfig(), torch.Generator().manual_seed(0))
    on = random_homographies(64, AugmentConfig(flip_vertical=True), torch.Generator().manual_seed(0))
    assert (off[:, 1, 1] > 0).all()
    assert (on[:, 1, 1] < 0).any()


def test_lighting_changes_brightness_but_keeps_geometry() -> None:
    images = torch.full((16, 3, 8, 8), 128, dtype=torch.uint8)
    config = AugmentConfig(flip_horizontal=False, max_rotate=0, max_zoom=1.0, max_warp=0, max_lighting=0.4, p_lighting=1.0)
    out = augment_batch(images, config, torch.Generator().manual_seed(0))
    means = out.mean(dim=(1, 2, 3))
    assert means.std() > 0.01  # images got different brightness
    assert torch.allclose(out, out[:, :, :1, :1].expand_as(out))  # still flat images


def test_rotation_zoom_warp_move_pixels() -> None:
    images = _images(n=8, size=32)
    config = AugmentConfig(flip_horizontal=False, max_lighting=0, p_affine=1.0)
    out = augment_batch(images, config, torch.Generator().manual_seed(0))
    difference = (out - images.float() / 255).abs().mean(dim=(1, 2, 3))
    assert (difference > 0.05).all()
