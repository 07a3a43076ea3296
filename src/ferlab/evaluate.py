"""Score a model on labelled images and describe its errors as data.

`evaluate` runs the model once and returns an `Evaluation` (logits, probabilities, losses,
timing), optionally averaged over test-time augmentation views; `with_temperature` rescales
its scores by a fitted temperature (calibrate.py) without running the model again;
`summarize` turns it into the JSON-ready metrics of `metrics.json`; `top_losses`,
`most_confused` and `compare_errors` give fastai's interpretation vocabulary. Nothing here
prints or plots (see `report.py`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

from ferlab.augment import normalize, tta_views
from ferlab.calibrate import calibration_summary, fit_temperature, softmax
from ferlab.data import ImageSet, SkippedFile, batches
from ferlab.engine import Engine
from ferlab.shift import match_sharpness

__all__ = [
    "Evaluation",
    "Scores",
    "TopLoss",
    "compare_errors",
    "evaluate",
    "most_confused",
    "overlap_warning",
    "predict_logits",
    "predict_probabilities",
    "score_model",
    "summarize",
    "top_losses",
    "with_temperature",
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
    # Raw logits (N, C) of the plain pass, what temperature scaling is fitted on; None for
    # test-time augmentation, whose probabilities are an average over views.
    logits: np.ndarray | None = None
    temperature: float = 1.0  # probabilities = softmax(logits / temperature)
    tta: bool = False

    @property
    def predictions(self) -> np.ndarray:
        return self.probabilities.argmax(axis=1)

    @property
    def accuracy(self) -> float:
        return float((self.predictions == self.labels).mean()) if len(self.labels) else 0.0

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


def predict_logits(
    engine: Engine, images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
    batch_size: int = 128,
) -> tuple[np.ndarray, float]:
    """Logits (N, C) for uint8 images (N, 3, S, S) and the seconds the engine took."""
    mean_t = torch.tensor(mean)
    std_t = torch.tensor(std)
    outputs: list[torch.Tensor] = []
    seconds = 0.0
    for index in batches(len(images), batch_size, shuffle=False):
        inputs = normalize(images[index], mean_t, std_t)
        start = time.perf_counter()
        logits = engine.logits(inputs)  # returns on the CPU, so the clock includes the device
        seconds += time.perf_counter() - start
        outputs.append(logits.float())
    if not outputs:
        return np.zeros((0, 0), dtype=np.float32), 0.0
    return torch.cat(outputs).numpy(), seconds


def predict_probabilities(
    engine: Engine, images: torch.Tensor, mean: Sequence[float], std: Sequence[float],
    batch_size: int = 128, temperature: float = 1.0, tta: bool = False,
) -> tuple[np.ndarray, float]:
    """softmax(logits / temperature) for uint8 images (N, 3, S, S) and the engine's seconds.

    With `tta`, the average of the probabilities over `tta_views` of each image.
    """
    if not tta:
        logits, seconds = predict_logits(engine, images, mean, std, batch_size)
        return (softmax(logits, temperature) if len(logits) else logits), seconds
    outputs: list[np.ndarray] = []
    seconds = 0.0
    for index in batches(len(images), batch_size, shuffle=False):
        # Views are made per batch: all views of a whole set would not fit in memory.
        scored = [predict_logits(engine, view, mean, std, batch_size) for view in tta_views(images[index])]
        outputs.append(np.mean([softmax(logits, temperature) for logits, _ in scored], axis=0))
        seconds += sum(spent for _, spent in scored)
    if not outputs:
        return np.zeros((0, 0), dtype=np.float32), 0.0
    return np.concatenate(outputs), seconds


def evaluate(
    engine: Engine, images: ImageSet, mean: Sequence[float], std: Sequence[float],
    split: str, batch_size: int = 128, match_sharpness_to: float | None = None,
    temperature: float = 1.0, tta: bool = False,
) -> Evaluation:
    """Score `images`; with `match_sharpness_to`, images much sharper than that are blurred
    to it first (shift.py), as prediction does; `temperature` and `tta` as in
    `predict_probabilities`."""
    pixels, matched = images.images, 0
    if match_sharpness_to is not None:
        pixels, sigmas = match_sharpness(pixels, match_sharpness_to)
        matched = int((sigmas > 0).sum())
    logits: np.ndarray | None = None
    if tta:
        probabilities, seconds = predict_probabilities(engine, pixels, mean, std, batch_size, temperature, tta=True)
    else:
        logits, seconds = predict_logits(engine, pixels, mean, std, batch_size)
        probabilities = softmax(logits, temperature) if len(logits) else logits
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
        logits=logits,
        temperature=temperature,
        tta=tta,
    )


def with_temperature(evaluation: Evaluation, temperature: float) -> Evaluation:
    """The same evaluation with its scores at `temperature` (labels and accuracy unchanged)."""
    if evaluation.logits is None:
        raise ValueError("a test-time-augmentation evaluation keeps no logits; evaluate with the temperature")
    probabilities = softmax(evaluation.logits, temperature) if len(evaluation.logits) else evaluation.logits
    return dataclasses.replace(evaluation, probabilities=probabilities, temperature=temperature)


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
        "accuracy": evaluation.accuracy,
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
        "temperature": evaluation.temperature,
        "tta": evaluation.tta,
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


@dataclass(frozen=True)
class Scores:
    """A trained model scored on its validation (and test) images, calibrated."""

    evaluations: dict[str, Evaluation]  # "valid", "test", "test_as_given"; at the temperature
    temperature: float  # fitted on the validation split
    calibration: dict[str, dict[str, Any]]  # split -> calibration_summary()
    tta: dict[str, dict[str, float]]  # split -> accuracy without / with TTA and the gain


def _tta_gain(plain: Evaluation, augmented: Evaluation) -> dict[str, float]:
    return {"accuracy": plain.accuracy, "accuracy_tta": augmented.accuracy, "gain": augmented.accuracy - plain.accuracy}


def score_model(
    engine: Engine, valid: ImageSet, test: ImageSet | None, mean: Sequence[float],
    std: Sequence[float], match_sharpness_to: float | None = None, batch_size: int = 128,
) -> Scores:
    """Fit the temperature on `valid`, score both splits with it, and measure what test-time
    augmentation changes. `test` is scored as `ferlab predict` scores (images much sharper
    than `match_sharpness_to` blurred to it) and, when that touched any, also as given.
    Calibration on `valid` is in-sample; on `test` it is the honest, out-of-sample figure.
    """
    raw = {"valid": evaluate(engine, valid, mean, std, "valid", batch_size)}
    if test is not None:
        raw["test"] = evaluate(engine, test, mean, std, "test", batch_size, match_sharpness_to)
        if raw["test"].sharpness_matched:
            raw["test_as_given"] = evaluate(engine, test, mean, std, "test as given", batch_size)
    fitted = raw["valid"].logits
    assert fitted is not None
    temperature = fit_temperature(fitted, raw["valid"].labels) if len(fitted) else 1.0
    evaluations = {split: with_temperature(e, temperature) for split, e in raw.items()}
    calibration = {
        split: calibration_summary(e.logits, e.labels, temperature)
        for split, e in raw.items() if e.logits is not None and split != "test_as_given"
    }
    tta = {}
    for split, images in (("valid", valid), ("test", test)):
        if images is not None:
            sharpness = match_sharpness_to if split == "test" else None
            augmented = evaluate(engine, images, mean, std, split, batch_size, sharpness, temperature, tta=True)
            tta[split] = _tta_gain(evaluations[split], augmented)
    return Scores(evaluations, temperature, calibration, tta)


def overlap_warning(training_digests: set[str], digests: Sequence[str], name: str) -> str | None:
    """A loud warning when files scored as `name` are byte-identical to training files."""
    shared = sum(1 for d in digests if d and d in training_digests)
    if not shared:
        return None
    return (
        f"{shared} of the {len(digests)} {name} images are byte-identical to files the model was "
        "trained or validated on: accuracy on them measures memory, not generalisation. "
        "Remove them from the evaluation folder for an honest score."
    )
