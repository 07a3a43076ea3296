"""Batch augmentation on tensors: the study's fastai `aug_transforms`, done per batch.

Every image of a batch gets its own random geometric transform (flips, rotation, zoom with a
random centre, perspective warp), composed into one 3x3 homography and applied with a single
`grid_sample` call, then its own lighting change (brightness and contrast in logit space, as
fastai does). Working on the decoded uint8 batch keeps augmentation cheap on a CPU and the
same on a GPU. All randomness comes from the `torch.Generator` passed in, so a seeded run
augments identically every time.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ferlab.config import AugmentConfig

__all__ = ["TTA_CROP", "augment_batch", "normalize", "random_homographies", "tta_views"]

TTA_CROP = 0.9  # side of each test-time corner crop, as a share of the image's side


def normalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """uint8 or [0,1] float (N, 3, H, W) -> float normalised with per-channel mean/std."""
    if images.dtype == torch.uint8:
        images = images.float().div_(255.0)
    return (images - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)


def _uniform(n: int, low: float, high: float, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=generator) * (high - low) + low


def _coin(n: int, p: float, generator: torch.Generator | None) -> torch.Tensor:
    return torch.rand(n, generator=generator) < p


def _perspective(corner_shift: torch.Tensor) -> torch.Tensor:
    """Homographies (N, 3, 3) taking the unit square's corners to the shifted corners.

    `corner_shift` is (N, 4, 2): how far each corner of [-1, 1]^2 moves. Solves the usual
    8-unknown linear system per image (the 9th entry fixed to 1).
    """
    n = corner_shift.shape[0]
    source = torch.tensor([[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]).expand(n, 4, 2)
    target = source + corner_shift
    rows = []
    rhs = []
    for k in range(4):
        x, y = source[:, k, 0], source[:, k, 1]
        u, v = target[:, k, 0], target[:, k, 1]
        one, zero = torch.ones_like(x), torch.zeros_like(x)
        rows.append(torch.stack([x, y, one, zero, zero, zero, -u * x, -u * y], dim=1))
        rows.append(torch.stack([zero, zero, zero, x, y, one, -v * x, -v * y], dim=1))
        rhs.extend([u, v])
    system = torch.stack(rows, dim=1)  # (N, 8, 8)
    solution = torch.linalg.solve(system, torch.stack(rhs, dim=1))  # (N, 8)
    return torch.cat([solution, torch.ones(n, 1)], dim=1).view(n, 3, 3)


def random_homographies(
    n: int, config: AugmentConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(N, 3, 3) maps from output to input coordinates in [-1, 1] (grid_sample's convention)."""
    matrices = torch.eye(3).repeat(n, 1, 1)
    # Flips: a sign change on one axis.
    if config.flip_horizontal:
        flip = _coin(n, 0.5, generator)
        matrices[flip, 0, 0] = -1.0
    if config.flip_vertical:
        flip = _coin(n, 0.5, generator)
        matrices[flip, 1, 1] = -matrices[flip, 1, 1]
    # Rotation about the centre.
    if config.max_rotate > 0:
        angle = _uniform(n, -config.max_rotate, config.max_rotate, generator) * math.pi / 180
        angle = torch.where(_coin(n, config.p_affine, generator), angle, torch.zeros_like(angle))
        cos, sin = torch.cos(angle), torch.sin(angle)
        rotation = torch.eye(3).repeat(n, 1, 1)
        rotation[:, 0, 0], rotation[:, 0, 1] = cos, -sin
        rotation[:, 1, 0], rotation[:, 1, 1] = sin, cos
        matrices = rotation @ matrices
    # Zoom in by `scale` around a random centre that keeps the view inside the image.
    if config.max_zoom > 1.0:
        scale = _uniform(n, 1.0, config.max_zoom, generator)
        scale = torch.where(_coin(n, config.p_affine, generator), scale, torch.ones_like(scale))
        shift = 1.0 - 1.0 / scale
        zoom = torch.eye(3).repeat(n, 1, 1)
        zoom[:, 0, 0] = zoom[:, 1, 1] = 1.0 / scale
        zoom[:, 0, 2] = shift * _uniform(n, -1.0, 1.0, generator)
        zoom[:, 1, 2] = shift * _uniform(n, -1.0, 1.0, generator)
        matrices = zoom @ matrices
    # Perspective warp: fastai moves the view's edges by up to max_warp; corners here.
    if config.max_warp > 0:
        magnitude = _uniform(n * 2, -config.max_warp, config.max_warp, generator).view(n, 2)
        magnitude = magnitude * _coin(n, config.p_affine, generator).float().unsqueeze(1)
        # A keystone: the top edge narrows while the bottom widens (x), and likewise the
        # left edge against the right (y); corners in order TL, TR, BR, BL.
        pair = torch.stack([magnitude[:, 0], magnitude[:, 1]], dim=1)  # (N, 2)
        shift = torch.stack([pair, -pair, pair, -pair], dim=1) * 0.5  # (N, 4, 2)
        matrices = matrices @ _perspective(shift)
    return matrices


def _warp(images: torch.Tensor, matrices: torch.Tensor) -> torch.Tensor:
    """Resample float images (N, C, H, W) through homographies (N, 3, 3)."""
    n, _, height, width = images.shape
    ys = torch.linspace(-1.0, 1.0, height, device=images.device)
    xs = torch.linspace(-1.0, 1.0, width, device=images.device)
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    points = torch.stack([grid_x, grid_y, torch.ones_like(grid_x)], dim=-1).view(1, -1, 3)
    mapped = points @ matrices.to(images.device).transpose(1, 2)  # (N, H*W, 3)
    grid = mapped[..., :2] / mapped[..., 2:].clamp(min=1e-6)
    grid = grid.view(n, height, width, 2)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=True)


def _lighting(
    images: torch.Tensor, config: AugmentConfig, generator: torch.Generator | None
) -> torch.Tensor:
    """fastai's Brightness and Contrast on [0, 1] images, in logit space."""
    n = images.shape[0]
    limit = config.max_lighting
    brightness = _uniform(n, 0.5 * (1 - limit), 0.5 * (1 + limit), generator)
    brightness = torch.where(
        _coin(n, config.p_lighting, generator), brightness, torch.full_like(brightness, 0.5)
    )
    log_contrast = _uniform(n, math.log(1 - limit), -math.log(1 - limit), generator)
    log_contrast = torch.where(
        _coin(n, config.p_lighting, generator), log_contrast, torch.zeros_like(log_contrast)
    )
    device = images.device
    logits = torch.logit(images.clamp(1e-4, 1 - 1e-4))
    logits = logits * torch.exp(log_contrast).to(device).view(n, 1, 1, 1)
    logits = logits + torch.logit(brightness).to(device).view(n, 1, 1, 1)
    return torch.sigmoid(logits)


def augment_batch(
    images: torch.Tensor, config: AugmentConfig, generator: torch.Generator | None = None
) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> augmented float (N, 3, H, W) in [0, 1], on the images' device."""
    result = images.float().div_(255.0)
    if not config.enabled:
        return result
    matrices = random_homographies(result.shape[0], config, generator)
    if not torch.equal(matrices, torch.eye(3).expand_as(matrices)):
        result = _warp(result, matrices)
    if config.max_lighting > 0:
        result = _lighting(result, config, generator)
    return result


def tta_views(images: torch.Tensor) -> list[torch.Tensor]:
    """Test-time augmentation views of uint8 (N, 3, S, S): the images, their mirror images,
    and their four corner crops of `TTA_CROP` of the side, resized back to S (float in [0, 1]).

    Mild versions of what training augments with (flips, zoom), so each view is an image the
    model has learnt to label; the caller averages the views' probabilities.
    """
    size = images.shape[-1]
    crop = max(1, round(size * TTA_CROP))
    views = [images, images.flip(-1)]
    floats = images.float().div(255.0)
    for top, left in ((0, 0), (0, size - crop), (size - crop, 0), (size - crop, size - crop)):
        corner = floats[..., top : top + crop, left : left + crop]
        views.append(F.interpolate(corner, size=(size, size), mode="bilinear", align_corners=False))
    return views
