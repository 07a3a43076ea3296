"""Class imbalance: which training images an epoch sees, and the loss it minimises.

The study's data set was unbalanced (surprise 1,235 vs neutral 4,027 images), and so is
FER2013's (happy is 2.8x surprise). Three standard remedies, chosen with `--balance`:
- `weighted-loss`: every class weighs the same in the loss (weight N / (C * n_class));
- `oversample`: each epoch draws every class up to the largest one's count (with repeats);
- `undersample`: each epoch draws every class down to the smallest one's count.
`--loss focal` replaces cross-entropy with the focal loss (Lin et al., 2017), which weighs
down the images the model already gets right; it combines with any of the above.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ferlab.config import BALANCES, LOSSES

__all__ = ["BALANCES", "LOSSES", "class_weights", "epoch_order", "epoch_size", "loss_function"]


LossFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (logits, targets) -> loss


def _check_choice(value: str, choices: tuple[str, ...], what: str) -> None:
    if value not in choices:
        raise ValueError(f"unknown {what} {value!r}; choose from {', '.join(choices)}")


def _counts(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    return torch.bincount(labels, minlength=num_classes)


def class_weights(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """N / (C * n_class) per class (float, (C,)): 1 for every class when balanced; a class
    with no training images gets 0 (it cannot be learnt, and must not divide by zero)."""
    counts = _counts(labels, num_classes).double()
    present = int((counts > 0).sum())
    weights = torch.where(counts > 0, counts.sum() / (present * counts.clamp(min=1)), torch.zeros_like(counts))
    return weights.float()


def epoch_size(labels: torch.Tensor, num_classes: int, balance: str) -> int:
    """How many images an epoch draws under `balance`."""
    _check_choice(balance, BALANCES, "balance")
    counts = _counts(labels, num_classes)
    present = counts[counts > 0]
    if balance == "oversample":
        return int(present.max()) * len(present)
    if balance == "undersample":
        return int(present.min()) * len(present)
    return len(labels)


def epoch_order(labels: torch.Tensor, num_classes: int, balance: str, generator: torch.Generator) -> torch.Tensor:
    """The indices (into `labels`) one epoch trains on, shuffled.

    `none` and `weighted-loss`: every image once. `oversample`: every image of a class once,
    then random repeats up to the largest class's count. `undersample`: a random subset of
    each class of the smallest class's count.
    """
    _check_choice(balance, BALANCES, "balance")
    if balance in ("none", "weighted-loss"):
        return torch.randperm(len(labels), generator=generator)
    target = epoch_size(labels, num_classes, balance) // int((_counts(labels, num_classes) > 0).sum())
    parts = []
    for label in range(num_classes):
        members = torch.nonzero(labels == label).flatten()
        if len(members) == 0:
            continue
        shuffled = members[torch.randperm(len(members), generator=generator)]
        if balance == "undersample":
            parts.append(shuffled[:target])
        else:
            extra = members[torch.randint(len(members), (target - len(members),), generator=generator)]
            parts.append(torch.cat([shuffled, extra]))
    order = torch.cat(parts)
    return order[torch.randperm(len(order), generator=generator)]


def loss_function(
    loss: str, balance: str, labels: torch.Tensor, num_classes: int, gamma: float = 2.0
) -> LossFunction:
    """The training loss: cross-entropy or focal, class-weighted under `weighted-loss`."""
    _check_choice(loss, LOSSES, "loss")
    _check_choice(balance, BALANCES, "balance")
    weight = class_weights(labels, num_classes) if balance == "weighted-loss" else None

    def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        w = None if weight is None else weight.to(logits.device)
        return F.cross_entropy(logits, targets, weight=w)

    def focal(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits, dim=1).gather(1, targets[:, None]).squeeze(1)  # (N,)
        per_image = -((1 - log_p.exp()) ** gamma) * log_p
        if weight is None:
            return per_image.mean()
        w = weight.to(logits.device)[targets]
        return (w * per_image).sum() / w.sum()  # the weighted mean, as cross_entropy's

    return focal if loss == "focal" else cross_entropy
