"""Calibrated scores: temperature scaling and the expected calibration error.

A network fine-tuned with cross-entropy is usually over-confident: among the images it
labels with 0.9 confidence, far fewer than 90% are right. Temperature scaling (Guo et al.,
2017) divides the logits by one scalar T, fitted on the validation split by minimising the
negative log-likelihood; the predicted label never changes, only how sure the scores are.
The expected calibration error (ECE) measures the gap: images are binned by confidence and
the bins' |accuracy - mean confidence| are averaged, weighted by their share of images.
Everything here takes arrays and returns numbers; nothing trains or plots.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = [
    "ReliabilityBins",
    "calibration_summary",
    "expected_calibration_error",
    "fit_temperature",
    "reliability_bins",
    "softmax",
]

BINS = 15  # the usual choice for ECE (Guo et al.); fewer hide miscalibration, more are noisy
# The temperature is searched over 1/T in this range: T from 0.05 (sharpen 20x) to 20.
INVERSE_TEMPERATURE_RANGE = (0.05, 20.0)
SEARCH_STEPS = 100  # golden-section steps: the bracket shrinks 0.618x each, far below 1e-6


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of logits (N, C) / temperature, computed in float64."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    scaled -= scaled.max(axis=1, keepdims=True)
    exp = np.exp(scaled)
    return exp / exp.sum(axis=1, keepdims=True)


def _nll(logits: np.ndarray, labels: np.ndarray, inverse_temperature: float) -> float:
    scaled = logits * inverse_temperature
    top = scaled.max(axis=1)
    log_sum = top + np.log(np.exp(scaled - top[:, None]).sum(axis=1))
    return float(np.mean(log_sum - scaled[np.arange(len(labels)), labels]))


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The T minimising the mean negative log-likelihood of softmax(logits / T).

    The NLL is convex in 1/T (a log-sum-exp of a linear function minus a linear term), so a
    golden-section search over 1/T finds the global minimum. No images: T = 1.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    if len(labels) == 0:
        return 1.0
    low, high = INVERSE_TEMPERATURE_RANGE
    ratio = (np.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    fa, fb = _nll(logits, labels, a), _nll(logits, labels, b)
    for _ in range(SEARCH_STEPS):
        if fa <= fb:
            high, b, fb = b, a, fa
            a = high - ratio * (high - low)
            fa = _nll(logits, labels, a)
        else:
            low, a, fa = a, b, fb
            b = low + ratio * (high - low)
            fb = _nll(logits, labels, b)
    return float(1.0 / ((low + high) / 2))


@dataclass(frozen=True)
class ReliabilityBins:
    """Equal-width confidence bins: what a reliability diagram draws."""

    edges: tuple[float, ...]  # BINS + 1 edges from 0 to 1
    confidence: tuple[float, ...]  # mean top probability per bin (nan where empty)
    accuracy: tuple[float, ...]  # share right per bin (nan where empty)
    count: tuple[int, ...]  # images per bin

    def to_json(self) -> dict[str, Any]:
        def clean(values: tuple[float, ...]) -> list[float | None]:
            return [None if np.isnan(v) else round(float(v), 6) for v in values]

        return {
            "edges": [round(e, 6) for e in self.edges],
            "confidence": clean(self.confidence),
            "accuracy": clean(self.accuracy),
            "count": list(self.count),
        }


def reliability_bins(probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS) -> ReliabilityBins:
    """Bin images (N, C) by their top probability; accuracy and confidence per bin."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    edges = np.linspace(0.0, 1.0, bins + 1)
    if len(labels) == 0:
        empty = tuple(float("nan") for _ in range(bins))
        return ReliabilityBins(tuple(edges.tolist()), empty, empty, tuple(0 for _ in range(bins)))
    confidence = probabilities.max(axis=1)
    right = probabilities.argmax(axis=1) == labels
    # Bin i holds (edges[i], edges[i+1]]; a confidence of exactly 0 cannot occur (>= 1/C).
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    sums = np.bincount(which, weights=confidence, minlength=bins)
    hits = np.bincount(which, weights=right.astype(np.float64), minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.where(counts > 0, sums / counts, np.nan)
        accuracy = np.where(counts > 0, hits / counts, np.nan)
    return ReliabilityBins(
        tuple(edges.tolist()), tuple(mean_confidence.tolist()), tuple(accuracy.tolist()),
        tuple(int(c) for c in counts),
    )


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = BINS) -> float:
    """Sum over bins of (share of images) x |accuracy - mean confidence|; 0 is perfect."""
    table = reliability_bins(probabilities, labels, bins)
    total = sum(table.count)
    if total == 0:
        return 0.0
    return float(sum(
        n / total * abs(a - c)
        for n, a, c in zip(table.count, table.accuracy, table.confidence, strict=True)
        if n > 0
    ))


def calibration_summary(logits: np.ndarray, labels: np.ndarray, temperature: float) -> dict[str, object]:
    """ECE and NLL before (T = 1) and after temperature scaling, with both reliability tables."""
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=np.int64)
    before, after = softmax(logits), softmax(logits, temperature)
    return {
        "temperature": temperature,
        "ece_before": expected_calibration_error(before, labels),
        "ece_after": expected_calibration_error(after, labels),
        "nll_before": _nll(logits, labels, 1.0) if len(labels) else 0.0,
        "nll_after": _nll(logits, labels, 1.0 / temperature) if len(labels) else 0.0,
        "reliability_before": reliability_bins(before, labels).to_json(),
        "reliability_after": reliability_bins(after, labels).to_json(),
    }
