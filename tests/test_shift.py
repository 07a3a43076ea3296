"""Sharpness matching: blur inputs much sharper than the training images to their sharpness."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms.functional import gaussian_blur

from ferlab.checkpoint import ModelCard, save_model
from ferlab.models import build_model, get_architecture
from ferlab.predict import Predictor
from ferlab.shift import MATCH_RATIO, blur_each, match_sharpness, sharpness
from ferlab.synthetic import draw_face


def _faces(count: int, size: int = 64) -> torch.Tensor:
    rng = np.random.default_rng(0)
    faces = [np.asarray(draw_face("happy", size, rng)) for _ in range(count)]
    return torch.from_numpy(np.stack(faces)).permute(0, 3, 1, 2).contiguous()  # uint8 (N, 3, S, S)


def test_per_image_blur_is_the_gaussian_blur() -> None:
    images = _faces(3).float()
    sigmas = torch.tensor([1.0, 2.5, 0.0])
    blurred = blur_each(images, sigmas)
    for i, sigma in enumerate(sigmas.tolist()[:2]):
        reference = gaussian_blur(images[i : i + 1], kernel_size=2 * int(np.ceil(3 * 2.5)) + 1, sigma=sigma)
        assert torch.allclose(blurred[i : i + 1], reference, atol=0.05)
    assert torch.allclose(blurred[2], images[2], atol=1e-3)  # sigma 0: unchanged


def test_sharp_images_are_brought_to_the_training_sharpness_and_others_left_alone() -> None:
    sharp = _faces(6)
    target = float(sharpness(blur_each(sharp.float(), torch.full((6,), 2.0))).median())
    matched, sigmas = match_sharpness(sharp, target)
    assert matched.dtype == torch.uint8 and matched.shape == sharp.shape
    assert bool((sigmas > 0.5).all())
    assert torch.allclose(sharpness(matched), torch.full((6,), target), rtol=0.1)
    # Images about as sharp as the training images are not touched.
    untouched, none = match_sharpness(sharp, float(sharpness(sharp).max()) / MATCH_RATIO * 1.01)
    assert torch.equal(untouched, sharp) and bool((none == 0).all())


def test_predictor_blurs_sharp_inputs_by_default_and_says_so(tmp_path: Path) -> None:
    torch.manual_seed(0)
    arch = get_architecture("resnet18")
    model = build_model(arch.name, 2).eval()
    sharp = _faces(1)
    blurry_target = float(sharpness(blur_each(sharp.float(), torch.tensor([3.0])))[0])
    card = ModelCard(arch=arch.name, class_names=("happy", "sad"), image_size=64, mean=arch.mean,
                     std=arch.std, match_sharpness=blurry_target)
    weights = save_model(model, card, tmp_path / "run" / "model.safetensors")
    path = tmp_path / "face.png"
    Image.fromarray(sharp[0].permute(1, 2, 0).numpy()).save(path)

    matched = Predictor.load(weights, device="cpu", engine="torch").predict_files([path])[0]
    as_given = Predictor.load(weights, device="cpu", engine="torch", match_sharpness=False).predict_files([path])[0]
    assert matched.blur_sigma > 1.0 and as_given.blur_sigma == 0.0
    assert matched.to_json()["blurred_to_training_sharpness"] == pytest.approx(matched.blur_sigma, abs=0.01)
    assert "blurred_to_training_sharpness" not in as_given.to_json()
    assert matched.scores != as_given.scores
    # A model card without a training sharpness (trained before, or sharp data) never blurs.
    plain = ModelCard(arch=arch.name, class_names=("happy", "sad"), image_size=64, mean=arch.mean, std=arch.std)
    save_model(model, plain, tmp_path / "plain" / "model.safetensors")
    assert Predictor.load(tmp_path / "plain", device="cpu", engine="torch").predict_files([path])[0].blur_sigma == 0.0
