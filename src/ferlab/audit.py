"""Label audit: images whose label is likely wrong, duplicates, and near-blank images.

The study saw mislabelled images among its highest losses; FER2013 has pixel-identical
images filed under different expressions and near-blank frames. `run_audit` finds them:
1. Out-of-sample probabilities: the pretrained body's pooled features are computed once
   (no augmentation), and a softmax regression is cross-validated on them (k folds), so every
   image is scored by a model that never saw it.
2. Confident learning (Northcutt et al., 2021): class k's threshold is the mean probability
   of k among images labelled k; an image whose confident class (the most probable class
   above its threshold) is not its label is a likely label error, ranked by the probability
   of its given label (lowest first: the most likely to be wrong).
3. Exact duplicates (identical decoded pixels) and near duplicates (16x16 grey thumbnails
   correlating above a threshold), grouped; a group whose members carry different labels is
   flagged as conflicting.
4. Near-blank images: grey-level standard deviation below a threshold.
The result is data (`AuditResult`); `write_audit_csv` and report.write_audit_gallery render it.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ferlab.data import ImageSet
from ferlab.models import FerNet
from ferlab.train import pooled_features

__all__ = [
    "AuditConfig",
    "AuditResult",
    "Finding",
    "confident_learning",
    "duplicate_groups",
    "near_blank",
    "near_duplicate_groups",
    "out_of_fold_probabilities",
    "run_audit",
    "write_audit_csv",
]

# Issue kinds, in the order the audit lists them: objective defects first, then suspicions.
NEAR_BLANK = "near-blank"
CONFLICTING = "conflicting-duplicates"
LABEL = "label"
DUPLICATE = "duplicate"
KIND_ORDER = (NEAR_BLANK, CONFLICTING, LABEL, DUPLICATE)
# Rows of these kinds are pre-marked exclude=yes in audit.csv: an image with no content, or
# one that carries two labels at once, teaches nothing. Suspected label errors wait for a person.
PRE_EXCLUDED = (NEAR_BLANK, CONFLICTING)
CHUNK = 1024  # images converted to float at once: a whole set would cost gigabytes
# Label suspicions are trusted only from a classifier this far above the largest class's share.
WEAK_MARGIN = 0.1


@dataclass(frozen=True)
class AuditConfig:
    folds: int = 5  # cross-validation folds for out-of-sample probabilities
    seed: int = 42
    blank_std: float = 2.0  # grey-level std (0-255) below which an image is near-blank
    # Correlation of zero-mean 16x16 grey thumbnails above which two images are near
    # duplicates; high, because aligned face crops all correlate fairly well.
    near_duplicate_correlation: float = 0.995
    l2: float = 1e-3  # weight decay of the softmax regression on standardised features
    iterations: int = 100  # L-BFGS iterations per fold


@dataclass(frozen=True)
class Finding:
    """One image the audit flags (a row of audit.csv)."""

    index: int  # into the audited ImageSet
    path: Path
    issues: tuple[str, ...]  # kinds, most serious first
    given_label: str
    suggested_label: str  # the most probable class out of sample
    suggested_probability: float
    given_probability: float  # out-of-sample probability of the given label
    group: int | None = None  # duplicate group id, if any
    exclude: bool = False  # pre-marked for --exclude (near-blank, conflicting duplicates)


@dataclass(frozen=True)
class AuditResult:
    findings: tuple[Finding, ...]  # ranked
    images: int
    class_names: tuple[str, ...]
    counts: dict[str, int]  # findings per kind
    duplicate_groups: int
    conflicting_groups: int
    out_of_sample_accuracy: float  # of the cross-validated classifier: how much to trust it
    majority_rate: float  # share of the largest class: what always guessing it would score

    @property
    def caution(self) -> str | None:
        """A warning when the auditing classifier is too weak for its label suspicions to mean much."""
        if self.out_of_sample_accuracy >= self.majority_rate + WEAK_MARGIN:
            return None
        return (
            f"The auditing classifier is barely better than always guessing the largest class "
            f"({self.out_of_sample_accuracy:.3f} vs {self.majority_rate:.3f} accuracy), so its label "
            "suspicions are weak evidence: review them, do not drop them wholesale. The duplicate and "
            "near-blank findings do not depend on it."
        )


def _standardise(train: torch.Tensor, other: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = train.mean(0), train.std(0).clamp(min=1e-6)
    return (train - mean) / std, (other - mean) / std


def _softmax_regression(features: torch.Tensor, labels: torch.Tensor, classes: int, config: AuditConfig) -> torch.Tensor:
    """Weights (D + 1, C) of an L2-regularised softmax regression, fitted with L-BFGS."""
    inputs = torch.cat([features, torch.ones(len(features), 1)], dim=1)
    weights = torch.zeros(inputs.shape[1], classes, requires_grad=True)
    optimizer = torch.optim.LBFGS([weights], max_iter=config.iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(inputs @ weights, labels) + config.l2 * (weights[:-1] ** 2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return weights.detach()


def out_of_fold_probabilities(
    features: torch.Tensor, labels: torch.Tensor, classes: int, config: AuditConfig
) -> np.ndarray:
    """(N, C) probabilities, each row from a classifier fitted without that image."""
    generator = torch.Generator().manual_seed(config.seed)
    fold_of = torch.randperm(len(labels), generator=generator) % max(2, config.folds)
    probabilities = torch.zeros(len(labels), classes)
    for fold in range(max(2, config.folds)):
        held = fold_of == fold
        if not held.any() or held.all():
            continue
        train, test = _standardise(features[~held], features[held])
        weights = _softmax_regression(train, labels[~held], classes, config)
        test_inputs = torch.cat([test, torch.ones(len(test), 1)], dim=1)
        probabilities[held] = F.softmax(test_inputs @ weights, dim=1)
    return probabilities.numpy()


def confident_learning(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Boolean (N,): images whose confident class differs from their given label."""
    classes = probabilities.shape[1]
    thresholds = np.array([
        probabilities[labels == k, k].mean() if (labels == k).any() else 1.0 for k in range(classes)
    ])
    above = probabilities >= thresholds[None, :]
    masked = np.where(above, probabilities, -1.0)
    confident = masked.argmax(axis=1)
    return above.any(axis=1) & (confident != labels)


def near_blank(images: torch.Tensor, max_std: float) -> np.ndarray:
    """Boolean (N,): uint8 (N, 3, S, S) images whose grey levels barely vary."""
    stds = [
        images[start : start + CHUNK].float().mean(dim=1).flatten(1).std(dim=1)
        for start in range(0, len(images), CHUNK)
    ]
    return (torch.cat(stds) < max_std).numpy() if stds else np.zeros(0, dtype=bool)


def duplicate_groups(images: torch.Tensor) -> list[list[int]]:
    """Groups (2 or more) of images with identical pixels, each sorted, by first member."""
    by_digest: dict[str, list[int]] = {}
    for i, image in enumerate(images):
        by_digest.setdefault(hashlib.sha1(image.numpy().tobytes()).hexdigest(), []).append(i)
    return sorted((g for g in by_digest.values() if len(g) > 1), key=lambda g: g[0])


def _thumbnails(images: torch.Tensor) -> torch.Tensor:
    """(N, 256) zero-mean, unit-norm 16x16 grey thumbnails (0 for a flat image)."""
    parts = [
        F.adaptive_avg_pool2d(images[start : start + CHUNK].float().mean(dim=1, keepdim=True), 16).flatten(1)
        for start in range(0, len(images), CHUNK)
    ]
    small = torch.cat(parts) if parts else torch.zeros(0, 256)
    small = small - small.mean(dim=1, keepdim=True)
    return small / small.norm(dim=1, keepdim=True).clamp(min=1e-6)


def near_duplicate_groups(images: torch.Tensor, min_correlation: float, chunk: int = 2048) -> list[list[int]]:
    """Groups of images whose thumbnails correlate above `min_correlation` (transitively)."""
    thumbs = _thumbnails(images)
    parent = list(range(len(images)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for start in range(0, len(thumbs), chunk):
        similarity = thumbs[start : start + chunk] @ thumbs.T  # (chunk, N)
        rows, cols = torch.nonzero(similarity >= min_correlation, as_tuple=True)
        for row, col in zip((rows + start).tolist(), cols.tolist(), strict=True):
            if row < col:
                parent[root(col)] = root(row)
    groups: dict[int, list[int]] = {}
    for i in range(len(images)):
        groups.setdefault(root(i), []).append(i)
    return sorted((g for g in groups.values() if len(g) > 1), key=lambda g: g[0])


def _merge_groups(exact: list[list[int]], near: list[list[int]]) -> list[list[int]]:
    """Near groups already contain exact ones (correlation 1); keep exact groups that a
    flat image (no thumbnail correlation) left out."""
    covered = {i for g in near for i in g}
    return sorted(near + [g for g in exact if not set(g) <= covered], key=lambda g: g[0])


def run_audit(model: FerNet, images: ImageSet, mean: tuple[float, ...], std: tuple[float, ...],
              device: torch.device, config: AuditConfig, batch_size: int = 128,
              channels_last: bool = False) -> AuditResult:
    """Audit `images` with the frozen body of `model` (ImageNet weights); see the module docstring."""
    classes = len(images.class_names)
    model.eval()
    features = pooled_features(
        model, images.images, torch.tensor(mean, device=device), torch.tensor(std, device=device),
        device, batch_size, channels_last,
    ).cpu()
    labels = images.labels
    probabilities = out_of_fold_probabilities(features, labels, classes, config)
    label_array = labels.numpy()
    suspects = confident_learning(probabilities, label_array)
    blank = near_blank(images.images, config.blank_std)
    groups = _merge_groups(duplicate_groups(images.images), near_duplicate_groups(images.images, config.near_duplicate_correlation))
    issues: dict[int, list[str]] = {}
    group_of: dict[int, int] = {}
    conflicting = 0
    for number, group in enumerate(groups):
        mixed = len({int(label_array[i]) for i in group}) > 1
        conflicting += mixed
        for position, i in enumerate(group):
            group_of[i] = number
            if mixed:
                issues.setdefault(i, []).append(CONFLICTING)
            elif position > 0:  # the first copy is kept; the others are redundant
                issues.setdefault(i, []).append(DUPLICATE)
    for index in np.flatnonzero(blank).tolist():
        issues.setdefault(index, []).append(NEAR_BLANK)
    for index in np.flatnonzero(suspects).tolist():
        issues.setdefault(index, []).append(LABEL)
    names = images.class_names
    findings = []
    for i, kinds in issues.items():
        ordered = tuple(sorted(set(kinds), key=KIND_ORDER.index))
        suggested = int(probabilities[i].argmax())
        findings.append(Finding(
            index=i, path=images.paths[i], issues=ordered, given_label=names[label_array[i]],
            suggested_label=names[suggested], suggested_probability=float(probabilities[i, suggested]),
            given_probability=float(probabilities[i, label_array[i]]), group=group_of.get(i),
            exclude=any(k in PRE_EXCLUDED for k in ordered),
        ))
    # Most serious kind first; within a kind, the least likely given label first.
    findings.sort(key=lambda f: (KIND_ORDER.index(f.issues[0]), f.group if f.issues[0] == CONFLICTING else 0,
                                 f.given_probability, str(f.path)))
    accuracy = float((probabilities.argmax(axis=1) == label_array).mean()) if len(label_array) else 0.0
    return AuditResult(
        findings=tuple(findings), images=len(images), class_names=names,
        counts={kind: sum(kind in f.issues for f in findings) for kind in KIND_ORDER},
        duplicate_groups=len(groups), conflicting_groups=conflicting, out_of_sample_accuracy=accuracy,
        majority_rate=float(np.bincount(label_array).max() / len(label_array)) if len(label_array) else 0.0,
    )


def write_audit_csv(result: AuditResult, path: Path) -> Path:
    """audit.csv: one row per flagged image, ranked; edit the `exclude` column, then train
    with `--exclude audit.csv`."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["rank", "path", "issues", "given_label", "suggested_label",
                         "suggested_probability", "given_probability", "group", "exclude"])
        for rank, f in enumerate(result.findings, start=1):
            writer.writerow([
                rank, str(f.path.resolve()), ";".join(f.issues), f.given_label, f.suggested_label,
                f"{f.suggested_probability:.4f}", f"{f.given_probability:.4f}",
                "" if f.group is None else f.group, "yes" if f.exclude else "",
            ])
    return path
