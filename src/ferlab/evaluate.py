"""Score a model on labelled images and describe its errors as data.

`evaluate` runs the model once and returns an `Evaluation` (probabilities, losses, timing);
`summarize` turns it into the JSON-ready metrics of `metrics.json`; `top_losses`,
`most_confused` and `compare_errors` give fastai's interpretation vocabulary. Nothing here
prints or plots (see `report.py`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from ferlab.augment import normalize
from ferlab.data import ImageSet, SkippedFile, batches
from ferlab.engine import Engine
from ferlab.shift import match_sharpness

__all__ = [
    "Evaluation",
    "TopLoss",
    "compare_errors",
    "evaluate",
    "most_confused",
    "predict_probabilities",
    "summarize",
    "top_losses",
]


@dataclass(frozen=True)
class Evaluation:
    """A model's outputs on one labelled image set."""

    split: str  # "valid", "test" or a folder name
    class_names: tuple[str, ...]
    paths: tuple[Path, ...]
    labels: np.ndarray  # (N,) int
    probabilities: np.ndarray  # (N, C), rows sum to 1
    images_per_second: float
    skipped: tuple[SkippedFile, ...] = ()
    engine: str = "torch"  # which inference engine produced the probabilities
    sharpness_matched: int = 0  # images blurred to the training sharpness before scoring

    @property
    def predictions(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    @property
    def losses(self) -> np.ndarray:
        """Per-image cross-entropy."""
        picked = self.probabilities[np.arange(len(self.labels)), self.labels]
        return -np.log(np.clip(picked, 1e-12, None))


@dataclass(frozen=True)
class TopLoss:
    index: int
    path: Path
    actual: str
    predicted: str
    loss: float
    probability: float  # of the actual class


def predict_probabilities(
    engine: Engine, images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
    batch_size: int = 128,
) -> tuple[np.ndarray, float]:
    """Softmax outputs for uint8 images (N, 3, S, S) and the seconds the engine took."""
    mean_t = torch.tensor(mean)
    std_t = torch.tensor(std)
    outputs: list[torch.Tensor] = []
    seconds = 0.0
    for index in batches(len(images), batch_size, shuffle=False):
        inputs = normalize(images[index], mean_t, std_t)
        start = time.perf_counter()
        logits = engine.logits(inputs)  # returns on the CPU, so the clock includes the device
        seconds += time.perf_counter() - start
        outputs.append(F.softmax(logits.float(), dim=1))
    if not outputs:
        return np.zeros((0, 0), dtype=np.float32), 0.0
    return torch.cat(outputs).numpy(), seconds


def evaluate(
    engine: Engine, images: ImageSet, mean: Sequence[float], std: Sequence[float],
    split: str, batch_size: int = 128, match_sharpness_to: float | None = None,
) -> Evaluation:
    """Score `images`; with `match_sharpness_to`, images much sharper than that are blurred
    to it first (shift.py), as prediction does."""
    pixels, matched = images.images, 0
    if match_sharpness_to is not None:
        pixels, sigmas = match_sharpness(pixels, match_sharpness_to)
        matched = int((sigmas > 0).sum())
    probabilities, seconds = predict_probabilities(engine, pixels, mean, std, batch_size)
    return Evaluation(
        split=split,
        class_names=images.class_names,
        paths=images.paths,
        labels=images.labels.numpy(),
        probabilities=probabilities,
        images_per_second=len(images) / seconds if seconds else 0.0,
        skipped=images.skipped,
        engine=engine.name,
        sharpness_matched=matched,
    )


def summarize(evaluation: Evaluation) -> dict[str, Any]:
    """metrics.json's block for one split."""
    labels, predictions = evaluation.labels, evaluation.predictions
    classes = list(range(len(evaluation.class_names)))
    precision, recall, f1, support = precision_recall_fscore_support(
        labels, predictions, labels=classes, zero_division=0
    )
    matrix = confusion_matrix(labels, predictions, labels=classes)
    return {
        "images": len(labels),
        "accuracy": float((labels == predictions).mean()) if len(labels) else 0.0,
        "loss": float(evaluation.losses.mean()) if len(labels) else 0.0,
        "macro_f1": float(np.mean(f1)),
        "per_class": {
            name: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, name in enumerate(evaluation.class_names)
        },
        "confusion_matrix": matrix.tolist(),
        "most_confused": [
            {"actual": a, "predicted": p, "count": n} for a, p, n in most_confused(matrix, evaluation.class_names)
        ],
        "images_per_second": evaluation.images_per_second,
        "engine": evaluation.engine,
        "sharpness_matched": evaluation.sharpness_matched,
        "skipped": [{"path": str(s.path), "reason": s.reason} for s in evaluation.skipped],
    }


def top_losses(evaluation: Evaluation, k: int) -> list[TopLoss]:
    """The k images with the highest loss, highest first."""
    losses = evaluation.losses
    order = np.argsort(-losses, kind="stable")[:k]
    names = evaluation.class_names
    return [
        TopLoss(
            index=int(i),
            path=evaluation.paths[i],
            actual=names[evaluation.labels[i]],
            predicted=names[evaluation.predictions[i]],
            loss=float(losses[i]),
            probability=float(evaluation.probabilities[i, evaluation.labels[i]]),
        )
        for i in order
    ]


def most_confused(
    matrix: np.ndarray, class_names: Sequence[str], min_count: int = 1
) -> list[tuple[str, str, int]]:
    """(actual, predicted, count) off-diagonal cells, largest first (fastai's most_confused)."""
    cells = [
        (class_names[a], class_names[p], int(matrix[a, p]))
        for a in range(len(class_names))
        for p in range(len(class_names))
        if a != p and matrix[a, p] >= min_count
    ]
    return sorted(cells, key=lambda cell: (-cell[2], cell[0], cell[1]))


def compare_errors(evaluations: dict[str, Evaluation]) -> dict[str, Any]:
    """What several models on the same images share: images all get wrong, class rankings."""
    first = next(iter(evaluations.values()))
    same_images = all(e.paths == first.paths for e in evaluations.values())
    wrong = {name: set(np.flatnonzero(e.predictions != e.labels).tolist()) for name, e in evaluations.items()}
    shared = sorted(set.intersection(*wrong.values())) if same_images and wrong else []
    best_classes = {}
    for name, evaluation in evaluations.items():
        per_class = summarize(evaluation)["per_class"]
        best_classes[name] = sorted(per_class, key=lambda c: -per_class[c]["f1"])
    return {
        "same_images": same_images,
        "images": len(first.paths),
        "wrong_by_all": [
            {
                "path": str(first.paths[i]),
                "actual": first.class_names[first.labels[i]],
                "predicted": {n: e.class_names[e.predictions[i]] for n, e in evaluations.items()},
            }
            for i in shared
        ],
        "classes_by_f1": best_classes,
    }
