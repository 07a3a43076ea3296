"""The model file: `model.safetensors` (weights) beside `model.json` (everything else).

The pair is the contract between training and prediction: architecture, class names, input
size, normalisation, head settings, weight source and the metrics the model earned. Loading
reads tensors and JSON only; no code runs (no pickle anywhere).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ferlab._version import __version__
from ferlab.models import FerNet, build_model

__all__ = ["FORMAT_VERSION", "ModelCard", "load_model", "metadata_path", "resolve_model_path", "save_model"]

FORMAT_VERSION = 1


@dataclass(frozen=True)
class ModelCard:
    """What `model.json` holds."""

    arch: str
    class_names: tuple[str, ...]
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    head_hidden: int = 512
    head_dropout: tuple[float, float] = (0.25, 0.5)
    weight_source: str = ""
    pretrained: bool = True
    # Median sharpness of the training images (shift.py): inputs much sharper than this are
    # blurred to it before scoring, so the model sees what it learnt from. None: never.
    match_sharpness: float | None = None
    # Temperature fitted on the validation split (calibrate.py): scores are
    # softmax(logits / temperature). 1.0: uncalibrated.
    temperature: float = 1.0
    # Trained on face crops turned so their eyes are level (train --crop-faces --align-faces):
    # prediction levels the faces it finds too.
    align_faces: bool = False
    metrics: dict[str, Any] = field(default_factory=dict)
    ferlab_version: str = __version__
    format_version: int = FORMAT_VERSION

    def to_json(self) -> dict[str, Any]:
        raw = asdict(self)
        for key in ("class_names", "mean", "std", "head_dropout"):
            raw[key] = list(raw[key])
        return raw

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ModelCard:
        version = int(raw.get("format_version", 0))
        if version > FORMAT_VERSION:
            raise ValueError(
                f"model file format {version} is newer than this ferlab understands "
                f"({FORMAT_VERSION}); upgrade ferlab"
            )
        known = set(cls.__dataclass_fields__)
        values = {k: v for k, v in raw.items() if k in known}
        for key in ("class_names", "mean", "std", "head_dropout"):
            if key in values:
                values[key] = tuple(values[key])
        return cls(**values)


def metadata_path(weights_path: Path) -> Path:
    return Path(weights_path).with_suffix(".json")


def resolve_model_path(path: Path) -> Path:
    """Accept a run folder or the .safetensors/.json file itself; return the .safetensors."""
    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    elif path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    if not path.is_file():
        raise FileNotFoundError(
            f"no model at {str(path)!r}; pass a run folder or its model.safetensors "
            "(made by `ferlab train`)"
        )
    if not metadata_path(path).is_file():
        raise FileNotFoundError(
            f"{str(metadata_path(path))!r} is missing; the model file needs its model.json beside it"
        )
    return path


def save_model(model: FerNet, card: ModelCard, path: Path) -> Path:
    """Write weights and metadata; returns the .safetensors path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    temporary = path.with_suffix(".safetensors.tmp")
    save_file(state, str(temporary), metadata={"format": "pt", "arch": card.arch})
    temporary.replace(path)  # atomic: an interrupted save never leaves half a model
    metadata_path(path).write_text(json.dumps(card.to_json(), indent=2) + "\n")
    return path


def load_model(path: Path, device: str | torch.device = "cpu") -> tuple[FerNet, ModelCard]:
    """Rebuild the network from `model.json` and fill it from `model.safetensors` (strict)."""
    path = resolve_model_path(path)
    card = ModelCard.from_json(json.loads(metadata_path(path).read_text()))
    model = build_model(card.arch, len(card.class_names), card.head_hidden, card.head_dropout)
    model.load_state_dict(load_file(str(path)), strict=True)
    return model.to(device).eval(), card
