"""The MTCNN detector: its networks load the weights the facenet-pytorch wheel ships (tests
with those skip when it is not installed) or any files of the right shapes; real faces are
found with their eyes; crops are levelled by the eyes; `--faces mtcnn` and `--align-faces`."""

from __future__ import annotations

import io
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ferlab.cli import main
from ferlab.detect import DetectorUnavailable, Face, best_detector, crop_face, eye_angle
from ferlab.engine import TorchEngine
from ferlab.mtcnn import ONet, PNet, RNet, find_mtcnn_weights

skimage_data = pytest.importorskip("skimage.data")

from photos import ASTRONAUT_FACE, composite, iou, tiny_model  # noqa: E402


def _real_detector():  # type: ignore[no-untyped-def]
    from ferlab.mtcnn import MTCNNDetector

    try:
        return MTCNNDetector()
    except DetectorUnavailable as error:
        pytest.skip(f"MTCNN weights not installed: {error}")


def _random_weights(folder: Path) -> Path:
    folder.mkdir()
    torch.manual_seed(0)
    for network, name in ((PNet(), "pnet.pt"), (RNet(), "rnet.pt"), (ONet(), "onet.pt")):
        torch.save(network.state_dict(), folder / name)
    return folder


def test_weights_are_found_checked_or_explained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ferlab.mtcnn import MTCNNDetector

    folder = _random_weights(tmp_path / "weights")
    monkeypatch.setenv("FERLAB_MTCNN_WEIGHTS", str(folder))
    assert find_mtcnn_weights() == folder and best_detector() == "mtcnn"
    detector = MTCNNDetector()  # loads strictly, every shape checked
    faces = detector.detect(np.full((120, 160, 3), 128, np.uint8))
    assert all(isinstance(f, Face) and len(f.landmarks or ()) == 5 for f in faces)

    torch.save({"conv1.weight": torch.zeros(10, 3, 5, 5)}, folder / "pnet.pt")
    with pytest.raises(DetectorUnavailable, match="not an MTCNN PNet"):
        MTCNNDetector()
    state = PNet().state_dict()
    state["conv1.weight"] = torch.zeros(10, 3, 5, 5)
    torch.save(state, folder / "pnet.pt")
    with pytest.raises(DetectorUnavailable, match=r"conv1.weight has shape \(10, 3, 5, 5\)"):
        MTCNNDetector()

    monkeypatch.setenv("FERLAB_MTCNN_WEIGHTS", str(tmp_path / "nowhere"))
    with pytest.raises(DetectorUnavailable, match="pip install --no-deps facenet-pytorch"):
        find_mtcnn_weights()
    assert best_detector() == "haar"  # what --faces auto falls back to


def test_the_astronauts_face_and_eyes_are_found() -> None:
    faces = _real_detector().detect(skimage_data.astronaut())
    assert len(faces) == 1
    face = faces[0]
    assert iou(face.box, ASTRONAUT_FACE) > 0.6 and 0.95 < face.score <= 1.0
    x, y, w, h = face.box
    (left_x, left_y), (right_x, right_y), (nose_x, nose_y), *mouth = face.landmarks or ()
    assert x < left_x < nose_x < right_x < x + w  # eyes either side of the nose
    assert y < max(left_y, right_y) < nose_y < min(m[1] for m in mouth) < y + h  # eyes, nose, mouth
    assert abs(eye_angle(face) or 99) < 8  # she holds her head nearly level


@pytest.mark.parametrize("quality", [None, 60])
def test_three_faces_of_different_sizes_are_found(quality: int | None) -> None:
    photo, expected = composite()
    if quality is not None:
        buffer = io.BytesIO()
        Image.fromarray(photo).save(buffer, "JPEG", quality=quality)
        photo = np.asarray(Image.open(buffer).convert("RGB"))
    faces = _real_detector().detect(photo)
    assert len(faces) == 3
    for face, box in zip(faces, expected, strict=True):
        assert iou(face.box, box) > 0.5, (face.box, box)


@pytest.mark.parametrize("turn", [-30, 25])
def test_a_tilted_face_is_found_and_levelled(turn: int) -> None:
    detector = _real_detector()
    photo = np.asarray(Image.fromarray(skimage_data.astronaut()).rotate(turn, Image.Resampling.BILINEAR, center=(226, 110)))
    faces = detector.detect(photo)
    assert len(faces) == 1
    level = eye_angle(detector.detect(skimage_data.astronaut())[0]) or 0.0
    assert eye_angle(faces[0]) == pytest.approx(level - turn, abs=6)  # PIL turns anticlockwise
    aligned = crop_face(photo, faces[0], 160, align=True)
    again = detector.detect(aligned)
    assert len(again) == 1 and abs(eye_angle(again[0]) or 99) < 4


def test_align_levels_the_eyes_of_a_drawn_face() -> None:
    """Two dark eyes on a light face, the right one lower: the aligned crop has them level."""
    photo = np.full((200, 200, 3), 220, np.uint8)
    eyes = ((80.0, 90.0), (120.0, 110.0))  # 26.6 degrees clockwise
    for ex, ey in eyes:
        photo[int(ey) - 4 : int(ey) + 5, int(ex) - 4 : int(ex) + 5] = 0
    face = Face((60, 60, 80, 80), 1.0, (*eyes, (100.0, 120.0), (85.0, 135.0), (115.0, 140.0)))
    assert eye_angle(face) == pytest.approx(26.57, abs=0.01)
    plain, aligned = crop_face(photo, face, 120), crop_face(photo, face, 120, align=True)

    def dark_rows(crop: np.ndarray, half: slice) -> float:
        rows, _ = np.nonzero(crop[:, half].min(axis=2) < 100)
        return float(rows.mean())

    left, right = slice(0, 60), slice(60, 120)
    assert dark_rows(plain, right) - dark_rows(plain, left) > 10  # tilted as drawn
    assert abs(dark_rows(aligned, right) - dark_rows(aligned, left)) < 2  # level
    assert np.array_equal(crop_face(photo, Face(face.box, 1.0), 120, align=True), plain)  # no landmarks: as is


def test_a_model_trained_on_levelled_faces_levels_the_faces_it_labels(tmp_path: Path) -> None:
    from ferlab.checkpoint import load_model
    from ferlab.predict import Predictor

    model, card = load_model(tiny_model(tmp_path), "cpu")
    assert not Predictor.from_model(model, card).align_faces
    levelled = replace(card, align_faces=True)
    assert Predictor(TorchEngine(model, torch.device("cpu")), levelled, faces="haar").align_faces


def test_predict_with_mtcnn_labels_each_face(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _real_detector()
    model = tiny_model(tmp_path)
    photo, expected = composite()
    path = tmp_path / "three.jpg"
    Image.fromarray(photo).save(path, quality=90)
    for extra in ([], ["--align-faces"]):
        assert main(["predict", str(model), str(path), "--faces", "mtcnn", "--format", "json", "--engine", "torch",
                     *extra]) == 0
        rows = json.loads(capsys.readouterr().out)
        assert [r["face"] for r in rows] == [0, 1, 2]
        for row, box in zip(rows, expected, strict=True):
            assert iou(tuple(row["box"]), box) > 0.5 and row["detector_score"] > 0.9
            x, y, w, h = row["box"]
            assert len(row["landmarks"]) == 5 and all(x < px < x + w and y < py < y + h for px, py in row["landmarks"])
