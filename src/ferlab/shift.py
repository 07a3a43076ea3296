"""Differences between the images a model learnt from and the images it is used on.

`image_statistics` summarises a set (brightness, contrast, sharpness) and `describe_shift`
turns a marked difference into a warning. `match_sharpness` is the remedy for the commonest
one, a model trained on blurred images and shown sharp ones (this machine's FER2013 copy:
training images blurred to a third of the test images' sharpness). Each input that is much
sharper than the training images gets the Gaussian blur that brings it to their median
sharpness, so the model sees what it was trained on; inputs as sharp as the training images,
or blurrier, are left alone. Prediction does this by default and says so for every image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "MATCH_RATIO",
    "blur_each",
    "describe_shift",
    "image_statistics",
    "match_sharpness",
    "sharpness",
]

# Inputs sharper than this multiple of the training sharpness are blurred to match; the same
# ratio raises the data-shift warning, so ordinary variation within one set is left alone.
MATCH_RATIO = 1.5
MAX_SIGMA_FRACTION = 0.15  # the strongest blur tried: sigma = 0.15 x image size
BISECTIONS = 8  # sigma found to within MAX_SIGMA / 2^8 (0.04 px at 64 px)
CHUNK = 256  # images blurred or measured at once


def sharpness(images: torch.Tensor) -> torch.Tensor:
    """Per image (N,) of uint8 or float (N, 3, S, S) on the 0-255 scale: the mean absolute
    Laplacian (4-neighbour second difference) of the grey levels. Blur lowers it steeply,
    smooth lighting gradients do not raise it. Compare sets at one size (ferlab compares at
    the model's input size): resizing changes it."""
    kernel = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]]).view(1, 1, 3, 3)
    values = []
    # In chunks: a float copy of a whole training set (19k x 3 x 64 x 64) costs ~1 GB.
    for start in range(0, len(images), CHUNK):
        gray = images[start : start + CHUNK].float().mean(dim=1, keepdim=True)  # (n, 1, S, S)
        values.append(F.conv2d(gray, kernel.to(gray.dtype)).abs().mean(dim=(1, 2, 3)))
    return torch.cat(values) if values else torch.zeros(0)


def image_statistics(images: torch.Tensor) -> dict[str, float]:
    """Medians over uint8 (N, 3, S, S) images of brightness, contrast and `sharpness`.

    Comparing these between a training set and the images a model is scored on reveals a
    shift (say, blurred training images, sharp test images) that makes accuracy on one say
    little about the other.
    """
    if len(images) == 0:
        return {"brightness": 0.0, "contrast": 0.0, "sharpness": 0.0}
    brightness, contrast = [], []
    for start in range(0, len(images), CHUNK):  # in chunks, as `sharpness`
        gray = images[start : start + CHUNK].float().mean(dim=1)  # (n, S, S)
        brightness.append(gray.mean(dim=(1, 2)))
        contrast.append(gray.std(dim=(1, 2)))
    return {
        "brightness": float(torch.cat(brightness).median()),
        "contrast": float(torch.cat(contrast).median()),
        "sharpness": float(sharpness(images).median()),
    }


def describe_shift(reference: dict[str, float], other: dict[str, float], name: str) -> str | None:
    """A warning when `other`'s images differ markedly from the training images, else None."""
    problems = []
    ratio = (other["sharpness"] + 1e-6) / (reference["sharpness"] + 1e-6)
    if ratio > MATCH_RATIO or ratio < 1 / MATCH_RATIO:
        problems.append(
            f"{'sharper' if ratio > 1 else 'blurrier'} ({ratio:.1f}x the training images' sharpness)"
        )
    if abs(other["brightness"] - reference["brightness"]) > 40:
        problems.append(f"brightness {other['brightness']:.0f} vs {reference['brightness']:.0f}")
    if abs(other["contrast"] - reference["contrast"]) > 25:
        problems.append(f"contrast {other['contrast']:.0f} vs {reference['contrast']:.0f}")
    if not problems:
        return None
    return (
        f"The {name} images differ from the training images: {'; '.join(problems)}. "
        "Scores on them measure this shift as much as the model; check how both sets were made."
    )


def blur_each(images: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Float (N, C, S, S) blurred with its own Gaussian sigma (N,) each (0: unchanged).

    Separable: one horizontal and one vertical pass of a per-image 1-D kernel, as a grouped
    convolution, with reflected borders.
    """
    n, channels, height, width = images.shape
    radius = max(1, min(math.ceil(3 * float(sigmas.max())), height - 1, width - 1))
    offsets = torch.arange(-radius, radius + 1, dtype=images.dtype)
    spread = sigmas.clamp(min=1e-3).to(images.dtype)[:, None]
    kernels = torch.exp(-(offsets[None, :] ** 2) / (2 * spread**2))  # (N, K)
    kernels = kernels / kernels.sum(dim=1, keepdim=True)
    kernels = kernels.repeat_interleave(channels, dim=0)  # (N*C, K)
    flat = images.reshape(1, n * channels, height, width)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="reflect"), kernels[:, None, None, :], groups=n * channels)
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="reflect"), kernels[:, None, :, None], groups=n * channels)
    return flat.reshape(n, channels, height, width)


def _to_uint8(images: torch.Tensor) -> torch.Tensor:
    return images.round().clamp(0, 255).to(torch.uint8)


def match_sharpness(images: torch.Tensor, target: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Blur each uint8 (N, 3, S, S) image sharper than MATCH_RATIO x `target` to `target`.

    Returns the images (uint8, same shape) and the blur applied to each (N,), 0 where none.
    Sharpness falls as the blur grows, so each image's sigma is found by bisection.
    """
    out = images.clone()
    sigmas = torch.zeros(len(images))
    todo = torch.nonzero(sharpness(images) > MATCH_RATIO * target).flatten()
    for start in range(0, len(todo), CHUNK):
        index = todo[start : start + CHUNK]
        batch = images[index].float()
        low = torch.zeros(len(index))
        high = torch.full((len(index),), MAX_SIGMA_FRACTION * images.shape[-1])
        for _ in range(BISECTIONS):
            middle = (low + high) / 2
            # Measured after rounding to uint8, as the output will be: at the low sharpness of
            # blurred images, rounding noise alone adds a third to the Laplacian.
            too_sharp = sharpness(_to_uint8(blur_each(batch, middle))) > target
            low = torch.where(too_sharp, middle, low)
            high = torch.where(too_sharp, high, middle)
        chosen = (low + high) / 2
        out[index] = _to_uint8(blur_each(batch, chosen))
        sigmas[index] = chosen
    return out, sigmas
