"""Predictor: a saved model plus its own preprocessing -> labels and per-class scores.

    >>> predictor = Predictor.load("runs/2026-12-03-resnet34")
    >>> predictor.predict_files(["face.jpg"])[0].label

Preprocessing is the model's own (from model.json): RGB, centre square crop, resize to the
training size, its normalisation. A file that cannot be read gives a `Prediction` with an
`error` and no label, never an exception.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from ferlab.calibrate import expected_calibration_error
from ferlab.checkpoint import ModelCard, load_model, resolve_model_path
from ferlab.data import (
    IMAGE_EXTENSIONS,
    decode_images,
    discover_for_model,
    file_digests,
    list_images,
    square_array,
    try_load_image,
    try_read_rgb,
)
from ferlab.detect import (
    DETECTORS,
    Face,
    FaceDetector,
    best_detector,
    crop_face,
    is_face_crop,
    make_detector,
)
from ferlab.engine import Engine, EngineChoice, TorchEngine, select_engine
from ferlab.evaluate import evaluate, overlap_warning, predict_probabilities, summarize
from ferlab.shift import describe_shift, image_statistics, match_sharpness
from ferlab.train import pick_device

__all__ = ["TRAINING_HASHES", "UNCERTAIN", "Prediction", "Predictor", "evaluate_folder", "expand_inputs"]

UNCERTAIN = "uncertain"  # the label below --min-confidence


@dataclass(frozen=True)
class Prediction:
    path: str
    label: str | None
    scores: dict[str, float] = field(default_factory=dict)  # every class; sums to 1
    error: str | None = None
    # The Gaussian blur (pixels at model size) that brought this image to the training
    # images' sharpness before scoring; 0 when it was scored as it is.
    blur_sigma: float = 0.0
    # With face detection: which face of the photo (0 = leftmost), its box (x, y, width,
    # height in the photo's pixels) and the detector's score. None: the whole image.
    face: int | None = None
    box: tuple[int, int, int, int] | None = None
    detector_score: float | None = None
    # The eyes (the image's left one first), nose and mouth corners, (x, y) in the photo's
    # pixels, from a detector that gives them (mtcnn).
    landmarks: tuple[tuple[float, float], ...] | None = None

    def to_json(self) -> dict[str, object]:
        row: dict[str, object] = {"path": self.path, "label": self.label, "scores": self.scores}
        if self.face is not None:
            row.update(face=self.face, box=list(self.box or ()), detector_score=self.detector_score)
        if self.landmarks is not None:
            row["landmarks"] = [[round(x, 1), round(y, 1)] for x, y in self.landmarks]
        if self.blur_sigma:
            row["blurred_to_training_sharpness"] = round(self.blur_sigma, 2)
        if self.error is not None:
            row["error"] = self.error
        return row


def expand_inputs(inputs: Iterable[Path]) -> list[Path | tuple[Path, str]]:
    """Files as given, folders expanded (sorted, recursive); missing paths as (path, error)."""
    expanded: list[Path | tuple[Path, str]] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            images, others = list_images(path)
            expanded.extend(images)
            expanded.extend((s.path, s.reason) for s in others)
        elif path.is_file():
            expanded.append(path)
        else:
            expanded.append((path, "no such file or folder"))
    return expanded


class Predictor:
    """A loaded model ready to label faces, on the fastest correct engine (see `engine.py`)."""

    def __init__(
        self, engine: Engine, card: ModelCard, engine_reason: str = "", match_sharpness: bool = True,
        tta: bool = False, min_confidence: float = 0.0, faces: str = "none", align_faces: bool = False,
    ) -> None:
        if not 0.0 <= min_confidence <= 1.0:
            raise ValueError(f"--min-confidence must be a probability between 0 and 1, not {min_confidence}")
        self.engine = engine
        self.card = card
        self.engine_reason = engine_reason or engine.name
        # Blur inputs much sharper than the training images to their sharpness (shift.py).
        self.sharpness_target = card.match_sharpness if match_sharpness else None
        self.tta = tta  # average over test-time views (augment.tta_views)
        # Below this calibrated top probability the label is UNCERTAIN; the scores stay.
        self.min_confidence = min_confidence
        # "none": every image is one face (as the training crops); "auto": detect faces in
        # images larger than a crop; a detector's name: detect in every image (detect.py).
        if faces not in ("none", "auto", *DETECTORS):
            raise ValueError(f"--faces takes none, auto or a detector ({', '.join(DETECTORS)}), not {faces!r}")
        self.faces = faces
        self.detector: FaceDetector | None = None if faces == "none" else make_detector(
            best_detector() if faces == "auto" else faces
        )
        # Level the eyes of each face crop (detect.crop_face): when asked, or when the model
        # was trained on levelled crops.
        self.align_faces = align_faces or card.align_faces

    @classmethod
    def from_model(cls, model: torch.nn.Module, card: ModelCard, device: str = "cpu") -> Predictor:
        """Wrap an in-memory network with PyTorch as the engine."""
        return cls(TorchEngine(model, pick_device(device)), card)

    @classmethod
    def load(
        cls, path: str | Path, device: str = "auto", engine: str = "auto", match_sharpness: bool = True,
        tta: bool = False, min_confidence: float = 0.0, faces: str = "none", align_faces: bool = False,
    ) -> Predictor:
        """From a run folder or a model.safetensors with its model.json beside it.

        `engine` is "auto" (ONNX Runtime when installed and matching PyTorch), "onnx" or "torch".
        `match_sharpness`: blur inputs much sharper than the training images to their
        sharpness first (see shift.py); a model trained on sharp images never blurs.
        `tta`: average the scores of test-time views; `min_confidence`: label images whose
        calibrated top score is below it UNCERTAIN; `faces`: "none", "auto" or a detector's
        name (see `Predictor.__init__`); `align_faces`: level the eyes of each face found.
        """
        resolved = pick_device(device)
        model, card = load_model(Path(path), resolved)
        choice: EngineChoice = select_engine(
            model, card.image_size, resolve_model_path(Path(path)), resolved, engine
        )
        return cls(choice.engine, card, choice.reason, match_sharpness, tta, min_confidence, faces, align_faces)

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.card.class_names

    def predict_arrays(self, images: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
        """uint8 (N, S, S, 3) at the model's input size -> calibrated probabilities (N, C) and
        the blur applied to each image to match the training sharpness (N,), 0 where none."""
        tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2)
        sigmas = torch.zeros(len(tensor))
        if self.sharpness_target is not None:
            tensor, sigmas = match_sharpness(tensor, self.sharpness_target)
        probabilities, _ = predict_probabilities(
            self.engine, tensor, self.card.mean, self.card.std, batch_size, self.card.temperature, self.tta
        )
        return probabilities, sigmas.numpy()

    def _prediction(
        self, path: str | Path, probabilities: np.ndarray, sigma: float, face: tuple[int, Face] | None
    ) -> Prediction:
        scores = {name: float(p) for name, p in zip(self.class_names, probabilities, strict=True)}
        label = self.label_for(probabilities)
        if face is None:
            return Prediction(str(path), label, scores, blur_sigma=float(sigma))
        return Prediction(str(path), label, scores, blur_sigma=float(sigma), face=face[0], box=face[1].box,
                          detector_score=face[1].score, landmarks=face[1].landmarks)

    def label_for(self, probabilities: np.ndarray) -> str:
        """The class with the top probability (C,), or UNCERTAIN below `min_confidence`."""
        top = int(probabilities.argmax())
        return self.class_names[top] if probabilities[top] >= self.min_confidence else UNCERTAIN

    def _crops(self, path: Path) -> list[tuple[tuple[int, Face] | None, np.ndarray]] | str:
        """The model-size crops to score for one file: the whole image, or one per face found;
        or the reason there are none."""
        if self.detector is None:
            array = try_load_image(path, self.card.image_size)
            return array if isinstance(array, str) else [(None, array)]
        photo = try_read_rgb(path)
        return photo if isinstance(photo, str) else self.photo_crops(photo)

    def photo_crops(self, photo: np.ndarray) -> list[tuple[tuple[int, Face] | None, np.ndarray]] | str:
        """The crops to score in uint8 (H, W, 3) RGB `photo`: (face index and face, crop) per
        face found, left to right; one (None, whole image) without detection or, under
        --faces auto, for an image no larger than a face crop; or why there are none."""
        size = self.card.image_size
        if self.detector is None or (self.faces == "auto" and is_face_crop(photo)):
            return [(None, square_array(Image.fromarray(photo), size))]
        found = self.detector.detect(photo)
        if not found:
            return f"no face found by the {self.detector.name} detector (--faces none scores the whole image)"
        return [((i, face), crop_face(photo, face, size, align=self.align_faces)) for i, face in enumerate(found)]

    def predict_photo(self, photo: np.ndarray, name: str = "") -> list[Prediction]:
        """One `Prediction` per face of uint8 (H, W, 3) RGB `photo` (see `photo_crops`); a
        single one with an `error` when no face is found."""
        crops = self.photo_crops(photo)
        if isinstance(crops, str):
            return [Prediction(name, None, error=crops)]
        probabilities, sigmas = self.predict_arrays(np.stack([crop for _, crop in crops]))
        return [
            self._prediction(name, row, sigma, face)
            for (face, _), row, sigma in zip(crops, probabilities, sigmas, strict=True)
        ]

    def predict_files(self, inputs: Sequence[str | Path], batch_size: int = 64) -> list[Prediction]:
        """One `Prediction` per image found in `inputs` (files or folders), in order."""
        results: list[Prediction] = []
        pending: list[tuple[int, Path, tuple[int, Face] | None, np.ndarray]] = []

        def flush() -> None:
            if not pending:
                return
            probabilities, sigmas = self.predict_arrays(np.stack([p[3] for p in pending]), batch_size)
            for (slot, path, face, _), row, sigma in zip(pending, probabilities, sigmas, strict=True):
                results[slot] = self._prediction(path, row, sigma, face)
            pending.clear()

        for item in expand_inputs(Path(p) for p in inputs):
            if isinstance(item, tuple):
                results.append(Prediction(str(item[0]), None, error=item[1]))
                continue
            if item.suffix.lower() not in IMAGE_EXTENSIONS:
                results.append(Prediction(str(item), None, error=f"not an image file extension ({item.suffix})"))
                continue
            crops = self._crops(item)
            if isinstance(crops, str):
                results.append(Prediction(str(item), None, error=crops))
                continue
            for face, array in crops:
                results.append(Prediction(str(item), None, error="pending"))
                pending.append((len(results) - 1, item, face, array))
            if len(pending) >= batch_size:
                flush()
        flush()
        return results


TRAINING_HASHES = "training_hashes.txt"  # written beside the model by `ferlab train`


def evaluate_folder(predictor: Predictor, folder: Path, model_path: Path, batch_size: int = 128) -> dict[str, Any]:
    """metrics.json for `predictor` on a labelled folder, scored as `predict` scores (at the
    model's temperature; with TTA when the predictor uses it), plus what a reader needs to
    trust the number: the score as given when inputs were blurred to the training sharpness,
    the TTA gain, calibration error, image statistics against the training images, and
    files byte-identical to the training files (see `ferlab train`'s training_hashes.txt).
    """
    card = predictor.card
    files = discover_for_model(folder, card.class_names)
    images = decode_images(files, card.image_size, require_every_class=False)
    score = functools.partial(evaluate, predictor.engine, images, card.mean, card.std, folder.name, batch_size)
    plain = score(predictor.sharpness_target, card.temperature)
    chosen = score(predictor.sharpness_target, card.temperature, tta=True) if predictor.tta else plain
    metrics = summarize(chosen)
    metrics["engine_reason"] = predictor.engine_reason
    if plain.logits is not None and len(plain.labels):
        metrics["ece"] = expected_calibration_error(plain.probabilities, plain.labels)
    if predictor.tta:
        metrics["tta_gain"] = {"accuracy_without": plain.accuracy, "gain": chosen.accuracy - plain.accuracy}
    if plain.sharpness_matched:
        as_given = summarize(score(None, card.temperature))
        metrics["as_given"] = {k: as_given[k] for k in ("accuracy", "macro_f1", "loss")}
    reference = card.metrics.get("train_image_statistics")
    metrics["image_statistics"] = image_statistics(images.images)
    shift = describe_shift(reference, metrics["image_statistics"], folder.name) if reference else None
    metrics["data_shift_warnings"] = [shift] if shift else []
    hashes = resolve_model_path(model_path).parent / TRAINING_HASHES
    overlap = None
    if hashes.is_file():
        training = set(hashes.read_text().split())
        overlap = overlap_warning(training, file_digests(images.paths), folder.name)
    metrics["overlap_warnings"] = [overlap] if overlap else []
    return metrics
