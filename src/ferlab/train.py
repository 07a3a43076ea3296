"""fit(): the study's fine-tuning policy on decoded image tensors.

Phase 1 trains the new head with the body frozen for `freeze_epochs` (the body's BatchNorm
layers learn too only with `train_bn`, see `TrainConfig`); phase 2 unfreezes everything with
discriminative learning rates (early body layers lr/100, late ones lr/10, the head lr); with
`keep_bn_statistics` the body's BatchNorm layers keep their ImageNet statistics then. Each
phase is one AdamW one-cycle schedule, as fastai's `fine_tune` does. With `cache_features`
the frozen phase computes the frozen body's pooled output once per augmented view and trains
only the head on it; with `channels_last` the network runs in that memory format. Early
stopping watches validation accuracy; `on_improve` is called with every new best so the
caller can write the checkpoint. A Ctrl-C ends the loop cleanly and the result says so; the
state after each finished epoch can be saved and resumed (resume.py).
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ferlab.augment import augment_batch, normalize
from ferlab.balance import LossFunction, epoch_order, epoch_size, loss_function
from ferlab.config import AugmentConfig, TrainConfig
from ferlab.data import ImageSet, batches
from ferlab.models import FerNet

__all__ = [
    "EpochRecord",
    "FitResult",
    "TrainState",
    "evaluate_loss",
    "fit",
    "one_cycle",
    "phase_throughput",
    "pick_device",
]

PHASES = ("frozen", "unfrozen")


@dataclass(frozen=True)
class EpochRecord:
    """One row of the study's epoch table."""

    phase: str
    epoch: int  # within the phase, from 0 as fastai prints it
    train_loss: float
    valid_loss: float
    accuracy: float
    seconds: float  # the whole epoch, validation included
    train_seconds: float = 0.0  # the training pass alone (feature caching included)
    images: int = 0  # training images seen

    @property
    def images_per_second(self) -> float:
        return self.images / self.train_seconds if self.train_seconds else 0.0


@dataclass
class TrainState:
    """Everything needed to continue after the last finished epoch."""

    phase_index: int = 0
    epoch_in_phase: int = 0  # epochs finished in the current phase
    history: list[EpochRecord] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)  # train loss per optimiser step
    best_accuracy: float = -1.0
    best_index: int = -1  # position in history of the best epoch
    stale_epochs: int = 0  # epochs since the best one
    stopped_early: bool = False
    seconds: float = 0.0
    images_seen: int = 0


@dataclass(frozen=True)
class FitResult:
    history: list[EpochRecord]
    step_losses: list[float]
    best_index: int
    best_accuracy: float
    interrupted: bool
    stopped_early: bool
    train_seconds: float
    images_per_second: float


def phase_throughput(history: list[EpochRecord]) -> dict[str, float]:
    """Training images per second in each phase (validation excluded), from the epoch records."""
    rates = {}
    for phase in PHASES:
        records = [r for r in history if r.phase == phase and r.train_seconds > 0]
        if records:
            rates[phase] = sum(r.images for r in records) / sum(r.train_seconds for r in records)
    return rates


def pick_device(requested: str) -> torch.device:
    """"auto" -> CUDA when present, else CPU; anything else is passed to torch."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA device is available; use --device cpu")
    return device


def one_cycle(step: int, total: int, pct_start: float) -> tuple[float, float]:
    """fastai's one-cycle: (lr multiplier of the peak, Adam beta1) at `step` of `total`.

    Cosine warm-up from peak/25 to the peak over `pct_start` of the steps, then cosine
    annealing to peak/1e5; momentum moves the other way between 0.95 and 0.85.
    """
    def cosine(start: float, end: float, fraction: float) -> float:
        return end + (start - end) / 2 * (1 + math.cos(math.pi * fraction))

    warm = max(1, round(total * pct_start))
    if step < warm:
        fraction = step / warm
        return cosine(1 / 25, 1.0, fraction), cosine(0.95, 0.85, fraction)
    fraction = (step - warm) / max(1, total - warm)
    return cosine(1.0, 1 / 1e5, fraction), cosine(0.85, 0.95, fraction)


def _param_groups(model: FerNet, config: TrainConfig, peak: float) -> list[dict[str, Any]]:
    early, late = model.body_groups()
    return [
        {"params": early, "peak": peak / config.early_lr_divisor},
        {"params": late, "peak": peak / config.body_lr_divisor},
        {"params": list(model.head.parameters()), "peak": peak},
    ]


def _phase_plan(config: TrainConfig, phase: str) -> tuple[int, float, float]:
    """(epochs, peak lr, pct_start) for a phase, following fastai's fine_tune."""
    if phase == "frozen":
        return config.freeze_epochs, config.lr, 0.99
    return config.epochs, config.lr / 2, 0.3


def _layout(inputs: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return inputs.contiguous(memory_format=torch.channels_last) if channels_last else inputs


def _loss_and_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> tuple[float, int]:
    """(summed cross-entropy, correct count) of one batch."""
    return float(F.cross_entropy(logits, targets, reduction="sum")), int((logits.argmax(1) == targets).sum())


@torch.no_grad()
def evaluate_loss(
    model: nn.Module, images: ImageSet, mean: torch.Tensor, std: torch.Tensor,
    device: torch.device, batch_size: int, channels_last: bool = False,
) -> tuple[float, float]:
    """(mean cross-entropy, accuracy) of `model` on un-augmented `images`."""
    model.eval()
    total_loss, correct = 0.0, 0
    for index in batches(len(images), batch_size, shuffle=False):
        inputs = _layout(normalize(images.images[index].to(device), mean, std), channels_last)
        loss, right = _loss_and_accuracy(model(inputs), images.labels[index].to(device))
        total_loss, correct = total_loss + loss, correct + right
    count = max(1, len(images))
    return total_loss / count, correct / count


@torch.no_grad()
def pooled_features(
    model: FerNet, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, device: torch.device,
    batch_size: int, channels_last: bool, augment: AugmentConfig | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """The frozen body's pooled output (N, 2*features) for uint8 images (N, 3, S, S).

    With `augment`, each image is augmented first (one random view per call).
    """
    model.body.eval()
    outputs = []
    for index in batches(len(images), batch_size, shuffle=False):
        batch = images[index].to(device)
        if augment is not None:
            batch = augment_batch(batch, augment, generator)
        outputs.append(model.pooled_features(_layout(normalize(batch, mean, std), channels_last)).float())
    return torch.cat(outputs) if outputs else torch.empty(0)


@dataclass
class _FeatureCache:
    """Cached pooled features of the frozen phase: augmented training views, plain valid."""

    views: list[torch.Tensor] = field(default_factory=list)  # each (N_train, 2*features)
    valid: torch.Tensor | None = None


@torch.no_grad()
def _evaluate_head(model: FerNet, features: torch.Tensor, labels: torch.Tensor, batch_size: int) -> tuple[float, float]:
    model.head.eval()
    total_loss, correct = 0.0, 0
    for index in batches(len(features), batch_size, shuffle=False):
        loss, right = _loss_and_accuracy(model.classify(features[index]), labels[index].to(features.device))
        total_loss, correct = total_loss + loss, correct + right
    count = max(1, len(features))
    return total_loss / count, correct / count


def _train_epoch(
    model: FerNet, optimizer: torch.optim.Optimizer, order: torch.Tensor, labels: torch.Tensor,
    forward: Callable[[torch.Tensor], torch.Tensor], criterion: LossFunction, device: torch.device,
    batch_size: int, schedule: Callable[[int], tuple[float, float]], first_step: int, progress: Any,
) -> list[float]:
    """One pass over the examples in `order` (shuffled indices, see balance.py);
    `forward(index)` gives a batch's logits. Returns the loss of every step.
    """
    model.train()
    losses: list[float] = []
    for step, positions in enumerate(batches(len(order), batch_size, shuffle=False), start=first_step):
        index = order[positions]
        if len(index) < 2:
            continue  # BatchNorm cannot train on a single image
        multiplier, beta1 = schedule(step)
        for group in optimizer.param_groups:
            group["lr"] = group["peak"] * multiplier
            group["betas"] = (beta1, group["betas"][1])
        loss = criterion(forward(index), labels[index].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{losses[-1]:.4f}")
    return losses


Forward = Callable[[torch.Tensor], torch.Tensor]  # batch indices -> logits
Score = Callable[[], tuple[float, float]]  # -> (valid loss, valid accuracy)


def _direct_epoch(
    model: FerNet, train: ImageSet, valid: ImageSet, config: TrainConfig, augment: AugmentConfig,
    mean: torch.Tensor, std: torch.Tensor, device: torch.device, batch_size: int,
    generator: torch.Generator,
) -> tuple[Forward, Score]:
    """Every batch decoded tensor -> augment -> normalise -> whole network."""

    def forward(index: torch.Tensor) -> torch.Tensor:
        batch = augment_batch(train.images[index].to(device), augment, generator)
        return model(_layout(normalize(batch, mean, std), config.channels_last))

    def score() -> tuple[float, float]:
        return evaluate_loss(model, valid, mean, std, device, batch_size * 2, config.channels_last)

    return forward, score


def _cached_epoch(
    model: FerNet, train: ImageSet, valid: ImageSet, config: TrainConfig, augment: AugmentConfig,
    mean: torch.Tensor, std: torch.Tensor, device: torch.device, batch_size: int,
    generator: torch.Generator, cache: _FeatureCache, epoch: int,
) -> tuple[Forward, Score]:
    """Frozen-phase epoch on cached pooled features; computes this epoch's view if missing."""
    views = max(1, config.feature_views) if augment.enabled else 1
    view = epoch % views
    while len(cache.views) <= view:
        cache.views.append(pooled_features(
            model, train.images, mean, std, device, batch_size * 2, config.channels_last,
            augment if augment.enabled else None, generator,
        ))
    if cache.valid is None:
        cache.valid = pooled_features(model, valid.images, mean, std, device, batch_size * 2, config.channels_last)
    features, valid_features = cache.views[view], cache.valid

    def forward(index: torch.Tensor) -> torch.Tensor:
        return model.classify(features[index.to(features.device)])

    def score() -> tuple[float, float]:
        return _evaluate_head(model, valid_features, valid.labels, batch_size * 2)

    return forward, score


def fit(
    model: FerNet,
    train: ImageSet,
    valid: ImageSet,
    config: TrainConfig,
    augment: AugmentConfig,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    batch_size: int,
    device: torch.device,
    on_epoch: Callable[[EpochRecord], None] | None = None,
    on_improve: Callable[[FerNet, EpochRecord], None] | None = None,
    on_state: Callable[[FerNet, torch.optim.Optimizer | None, TrainState, torch.Generator], None]
    | None = None,
    state: TrainState | None = None,
    optimizer_state: dict[str, Any] | None = None,
    generator_state: torch.Tensor | None = None,
    progress: bool = False,
) -> FitResult:
    """Train `model` in place and return the history; see the module docstring."""
    state = state or TrainState()
    mean_t = torch.tensor(mean, device=device)
    std_t = torch.tensor(std, device=device)
    generator = torch.Generator().manual_seed(config.seed)
    if generator_state is not None:
        generator.set_state(generator_state)
    num_classes = len(train.class_names)
    per_epoch = epoch_size(train.labels, num_classes, config.balance)
    steps_per_epoch = sum(1 for i in range(0, per_epoch, batch_size) if per_epoch - i >= 2)
    criterion = loss_function(config.loss, config.balance, train.labels, num_classes, config.focal_gamma)
    interrupted = False
    model.to(device)
    if config.channels_last:
        model.to(memory_format=torch.channels_last)
    cache = _FeatureCache()
    try:
        while state.phase_index < len(PHASES) and not state.stopped_early:
            phase = PHASES[state.phase_index]
            epochs, peak, pct_start = _phase_plan(config, phase)
            if state.epoch_in_phase >= epochs:  # e.g. --freeze-epochs 0
                state.phase_index, state.epoch_in_phase = state.phase_index + 1, 0
                continue
            model.freeze_body(phase == "frozen", config.train_bn, config.keep_bn_statistics)
            optimizer = torch.optim.AdamW(
                _param_groups(model, config, peak), lr=peak, weight_decay=config.weight_decay
            )
            if optimizer_state is not None:
                optimizer.load_state_dict(optimizer_state)
                optimizer_state = None
            total = epochs * steps_per_epoch
            phase_done = False
            while not (phase_done or state.stopped_early):
                start = time.perf_counter()
                bar = None
                if progress:
                    from tqdm import tqdm

                    bar = tqdm(total=steps_per_epoch, leave=False, desc=f"{phase} epoch {state.epoch_in_phase}")
                try:
                    if phase == "frozen" and config.cache_features and not config.train_bn:
                        forward, score = _cached_epoch(
                            model, train, valid, config, augment, mean_t, std_t, device,
                            batch_size, generator, cache, state.epoch_in_phase,
                        )
                    else:
                        forward, score = _direct_epoch(
                            model, train, valid, config, augment, mean_t, std_t, device, batch_size, generator
                        )
                    order = epoch_order(train.labels, num_classes, config.balance, generator)
                    losses = _train_epoch(
                        model, optimizer, order, train.labels, forward, criterion, device, batch_size,
                        functools.partial(one_cycle, total=total, pct_start=pct_start),
                        state.epoch_in_phase * steps_per_epoch, bar,
                    )
                finally:
                    if bar is not None:
                        bar.close()
                train_seconds = time.perf_counter() - start
                valid_loss, accuracy = score()
                seconds = time.perf_counter() - start
                record = EpochRecord(
                    phase, state.epoch_in_phase, sum(losses) / max(1, len(losses)),
                    valid_loss, accuracy, seconds, train_seconds, len(order),
                )
                state.history.append(record)
                state.step_losses.extend(losses)
                state.seconds += seconds
                state.images_seen += len(order)
                state.epoch_in_phase += 1
                if accuracy > state.best_accuracy:
                    state.best_accuracy, state.best_index = accuracy, len(state.history) - 1
                    state.stale_epochs = 0
                    if on_improve is not None:
                        on_improve(model, record)
                else:
                    state.stale_epochs += 1
                    state.stopped_early = state.stale_epochs >= config.patience
                phase_done = state.epoch_in_phase >= epochs
                if phase_done:
                    state.phase_index, state.epoch_in_phase = state.phase_index + 1, 0
                if on_state is not None:
                    # A finished phase's optimiser is not carried over: the next starts afresh.
                    on_state(model, None if phase_done else optimizer, state, generator)
                if on_epoch is not None:  # after saving: a printed epoch is a kept epoch
                    on_epoch(record)
    except KeyboardInterrupt:
        interrupted = True
    model.freeze_body(False)
    return FitResult(
        history=list(state.history),
        step_losses=list(state.step_losses),
        best_index=state.best_index,
        best_accuracy=state.best_accuracy,
        interrupted=interrupted,
        stopped_early=state.stopped_early,
        train_seconds=state.seconds,
        images_per_second=state.images_seen / state.seconds if state.seconds else 0.0,
    )
