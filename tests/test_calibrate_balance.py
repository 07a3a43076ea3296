"""Calibration (temperature scaling, ECE), class balance (sampling, weighted and focal loss)
and test-time augmentation views."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ferlab.augment import tta_views
from ferlab.balance import class_weights, epoch_order, epoch_size, loss_function
from ferlab.calibrate import (
    calibration_summary,
    expected_calibration_error,
    fit_temperature,
    reliability_bins,
    softmax,
)
from ferlab.engine import TorchEngine
from ferlab.evaluate import predict_probabilities


def _calibrated_logits(n: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is the true distribution the labels are drawn from."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1.5, (n, classes))
    probabilities = softmax(logits)
    labels = np.array([rng.choice(classes, p=p) for p in probabilities])
    return logits, labels


def test_ece_of_known_cases() -> None:
    confident = np.tile([0.9, 0.1], (10, 1))
    assert expected_calibration_error(confident, np.array([0] * 9 + [1])) == pytest.approx(0.0, abs=1e-12)
    assert expected_calibration_error(confident, np.zeros(10, dtype=int)) == pytest.approx(0.1)
    bins = reliability_bins(confident, np.zeros(10, dtype=int))
    assert sum(bins.count) == 10 and bins.count[13] == 10  # 0.9 falls in (0.8667, 0.9333]


def test_temperature_undoes_over_confidence() -> None:
    logits, labels = _calibrated_logits(4000, 5, seed=0)
    over_confident = 4.0 * logits  # what an over-fitted network looks like
    fit_half, check_half = slice(0, 2000), slice(2000, 4000)
    temperature = fit_temperature(over_confident[fit_half], labels[fit_half])
    assert temperature == pytest.approx(4.0, rel=0.15)
    # The golden-section search lands on the grid minimum of the NLL.
    grid = np.linspace(0.5, 8, 400)
    nll = [calibration_summary(over_confident[fit_half], labels[fit_half], t)["nll_after"] for t in grid]
    assert temperature == pytest.approx(grid[int(np.argmin(nll))], abs=0.05)
    summary = calibration_summary(over_confident[check_half], labels[check_half], temperature)
    assert summary["ece_before"] > 0.15 and summary["ece_after"] < 0.05  # out of sample
    assert summary["nll_after"] < summary["nll_before"]
    # Labels never change: argmax is the same at any temperature.
    assert np.array_equal(softmax(over_confident, temperature).argmax(1), over_confident.argmax(1))


def test_calibrated_scores_stay_near_one() -> None:
    logits, labels = _calibrated_logits(3000, 4, seed=1)
    assert fit_temperature(logits, labels) == pytest.approx(1.0, abs=0.1)
    assert fit_temperature(np.zeros((0, 4)), np.zeros(0, dtype=int)) == 1.0


LABELS = torch.tensor([0] * 6 + [1] * 3 + [2] * 1)


@pytest.mark.parametrize(("balance", "per_class"), [("oversample", 6), ("undersample", 1)])
def test_resampling_gives_every_class_the_same_share(balance: str, per_class: int) -> None:
    generator = torch.Generator().manual_seed(0)
    order = epoch_order(LABELS, 3, balance, generator)
    assert len(order) == epoch_size(LABELS, 3, balance) == 3 * per_class
    assert torch.bincount(LABELS[order], minlength=3).tolist() == [per_class] * 3
    if balance == "oversample":  # every image at least once
        assert set(order.tolist()) == set(range(len(LABELS)))


def test_plain_epochs_see_every_image_once() -> None:
    for balance in ("none", "weighted-loss"):
        order = epoch_order(LABELS, 3, balance, torch.Generator().manual_seed(0))
        assert sorted(order.tolist()) == list(range(len(LABELS)))
    with pytest.raises(ValueError, match="oversample"):
        epoch_order(LABELS, 3, "balanced", torch.Generator())


def test_weighted_and_focal_losses() -> None:
    weights = class_weights(LABELS, 4)  # class 3 has no images
    assert weights.tolist() == pytest.approx([10 / 18, 10 / 9, 10 / 3, 0.0])
    logits = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    targets = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0])
    plain = loss_function("cross-entropy", "none", LABELS, 3)(logits, targets)
    assert torch.allclose(plain, F.cross_entropy(logits, targets))
    weighted = loss_function("cross-entropy", "weighted-loss", LABELS, 3)(logits, targets)
    assert torch.allclose(weighted, F.cross_entropy(logits, targets, weight=class_weights(LABELS, 3)))
    # Focal with gamma 0 is cross-entropy; with gamma 2 it is smaller (easy images weigh less).
    assert torch.allclose(loss_function("focal", "none", LABELS, 3, gamma=0.0)(logits, targets), plain)
    focal = loss_function("focal", "weighted-loss", LABELS, 3)(logits, targets)
    assert focal < weighted
    assert torch.allclose(loss_function("focal", "weighted-loss", LABELS, 3, gamma=0.0)(logits, targets), weighted)


def test_tta_views_and_their_average() -> None:
    images = torch.randint(0, 256, (3, 3, 20, 20), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    views = tta_views(images)
    assert len(views) == 6 and all(v.shape == images.shape for v in views)
    assert torch.equal(views[0], images) and torch.equal(views[1], images.flip(-1))
    # The top-left crop keeps the top-left pixel's neighbourhood: its corner matches.
    assert abs(float(views[2][0, 0, 0, 0]) - float(images[0, 0, 0, 0]) / 255) < 0.25

    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 20 * 20, 4)).eval()
    engine = TorchEngine(network, torch.device("cpu"))
    mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)
    averaged, _ = predict_probabilities(engine, images, mean, std, batch_size=2, temperature=2.0, tta=True)
    expected = np.mean([predict_probabilities(engine, v, mean, std, 8, temperature=2.0)[0] for v in views], axis=0)
    assert np.allclose(averaged, expected, atol=1e-6)
    assert np.allclose(averaged.sum(1), 1.0)
