"""Face detection on real faces (scikit-image's astronaut photo, and composites of it), face
crops, and `ferlab predict --faces` / `--annotate` on photos with several faces."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ferlab.cli import main
from ferlab.detect import Face, HaarDetector, crop_face, make_detector

skimage_data = pytest.importorskip("skimage.data")

from photos import ASTRONAUT_FACE, composite, iou, tiny_model  # noqa: E402


def test_the_astronauts_face_is_found() -> None:
    faces = HaarDetector().detect(skimage_data.astronaut())
    assert len(faces) == 1
    assert iou(faces[0].box, ASTRONAUT_FACE) > 0.7 and faces[0].score > 0


@pytest.mark.parametrize("quality", [None, 95, 60])
def test_three_faces_of_different_sizes_are_found(quality: int | None) -> None:
    photo, expected = composite()
    if quality is not None:  # JPEG artefacts in the background must not become faces
        buffer = io.BytesIO()
        Image.fromarray(photo).save(buffer, "JPEG", quality=quality)
        photo = np.asarray(Image.open(buffer).convert("RGB"))
    faces = HaarDetector().detect(photo)
    assert len(faces) == 3
    for face, box in zip(faces, expected, strict=True):  # both left to right
        assert iou(face.box, box) > 0.5, (face.box, box)


def test_crop_face_adds_a_margin_and_pads_at_the_edges() -> None:
    photo = np.zeros((100, 100, 3), dtype=np.uint8)
    photo[40:60, 40:60] = 255  # a 20 px "face"
    crop = crop_face(photo, Face((40, 40, 20, 20), 1.0), size=30, margin=0.25)
    assert crop.shape == (30, 30, 3)
    # 20 px grown by a quarter on each side: 30 px, the face's 20 in the middle.
    assert crop[15, 15].tolist() == [255, 255, 255] and crop[1, 1].tolist() == [0, 0, 0]
    corner = crop_face(photo, Face((0, 0, 20, 20), 1.0), size=30)  # leaves the photo: edge repeated
    assert corner.shape == (30, 30, 3)
    with pytest.raises(ValueError, match="haar"):
        make_detector("retinaface")


@pytest.fixture(scope="module")
def model_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("model"))


def test_predict_labels_each_face_of_a_photo(model_file: Path, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    photo, expected = composite()
    path = tmp_path / "three.jpg"
    Image.fromarray(photo).save(path, quality=95)
    small = tmp_path / "crop.png"
    Image.fromarray(skimage_data.astronaut()[66:161, 177:272]).resize((48, 48)).save(small)
    empty = tmp_path / "empty.png"
    Image.fromarray(photo[:400, 1000:1400] * 0 + 90).save(empty)
    annotated = tmp_path / "annotated"
    args = ["predict", str(model_file), str(path), str(small), str(empty), "--format", "json",
            "--engine", "torch", "--annotate", str(annotated)]
    assert main(args) == 0
    rows = json.loads(capsys.readouterr().out)
    faces = [r for r in rows if r["path"] == str(path)]
    assert [r["face"] for r in faces] == [0, 1, 2]
    for row, box in zip(faces, expected, strict=True):
        assert iou(tuple(row["box"]), box) > 0.5 and row["label"] in ("happy", "sad")
        assert sum(row["scores"].values()) == pytest.approx(1.0, abs=1e-5)
    crop_row = next(r for r in rows if r["path"] == str(small))
    assert "box" not in crop_row and crop_row["label"] in ("happy", "sad")  # a crop already: whole image
    empty_row = next(r for r in rows if r["path"] == str(empty))
    assert empty_row["label"] is None and "no face found" in empty_row["error"]
    drawn = sorted(annotated.iterdir())
    assert len(drawn) == 2 and drawn[0].suffix == ".png"
    with Image.open(drawn[0]) as image:
        assert image.size == (1400, 900)
        pixels = np.asarray(image.convert("RGB"))
    x, y, _, _ = faces[1]["box"]
    assert pixels[y + 20, x].tolist() == [255, 40, 40]  # the box's left edge is drawn

    assert main(["predict", str(model_file), str(path), "--faces", "none", "--format", "json", "--engine", "torch"]) == 0
    whole = json.loads(capsys.readouterr().out)
    assert len(whole) == 1 and "box" not in whole[0]


def _write_clip(path: Path, frames: int = 40) -> None:
    """Two astronaut heads crossing a 480x320 clip in opposite directions, 10 frames/s."""
    import cv2

    x, y, w, h = ASTRONAUT_FACE
    head = np.asarray(Image.fromarray(skimage_data.astronaut()[y - 45 : y + h + 45, x - 45 : x + w + 45]).resize((110, 110)))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 10.0, (480, 320))
    for i in range(frames):
        frame = np.full((320, 480, 3), 200, dtype=np.uint8)
        frame[20:130, 10 + 8 * i : 120 + 8 * i] = head  # left to right, top
        frame[190:300, 360 - 8 * i : 470 - 8 * i] = head  # right to left, bottom
        writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
    writer.release()


def test_video_faces_keep_their_ids(model_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import csv

    import cv2

    clip = tmp_path / "clip.mp4"
    _write_clip(clip)
    out = tmp_path / "out"
    assert main(["predict", str(model_file), str(clip), "--every", "5", "--out", str(out), "--annotate",
                 str(tmp_path / "unused"), "--engine", "torch"]) == 0
    assert "8 of 40 frames labelled" in capsys.readouterr().out
    rows = list(csv.DictReader((out / "clip" / "frames.csv").open()))
    assert len(rows) == 16 and {r["frame"] for r in rows} == {str(f) for f in range(0, 40, 5)}
    assert {r["face_id"] for r in rows} == {"0", "1"}
    for face_id, moving_right in (("0", True), ("1", False)):
        xs = [int(r["x"]) for r in rows if r["face_id"] == face_id]
        assert len(xs) == 8 and xs == sorted(xs, reverse=not moving_right)  # one person, one id
    assert float(rows[-1]["time"]) == pytest.approx(3.5)
    assert all(abs(float(r["happy"]) + float(r["sad"]) - 1) < 1e-5 for r in rows)
    assert (out / "clip" / "expression.png").is_file()
    annotated = cv2.VideoCapture(str(out / "clip" / "annotated.mp4"))
    assert int(annotated.get(cv2.CAP_PROP_FRAME_COUNT)) == 8
    annotated.release()


def test_tracker_gives_new_ids_and_ends_lost_tracks() -> None:
    from ferlab.video import Tracker

    tracker = Tracker(max_missed=1)
    assert tracker.update([(0, 0, 10, 10), (50, 50, 10, 10)]) == [0, 1]
    assert tracker.update([(52, 51, 10, 10), (1, 1, 10, 10)]) == [1, 0]  # matched by overlap, not order
    assert tracker.update([]) == []
    assert tracker.update([(2, 1, 10, 10)]) == [0]  # one missed frame: still track 0
    assert tracker.update([]) == [] and tracker.update([]) == []
    assert tracker.update([(2, 1, 10, 10)]) == [2]  # gone for longer: a new person


def test_training_on_photos_crops_their_faces(tmp_path: Path) -> None:
    from ferlab.data import decode_images, discover, read_rgb
    from ferlab.detect import face_crop_decoder

    x, y, w, h = ASTRONAUT_FACE
    head = Image.fromarray(skimage_data.astronaut()[y - 45 : y + h + 45, x - 45 : x + w + 45])
    rng = np.random.default_rng(0)
    root = tmp_path / "photos"
    for name in ("happy", "sad"):
        (root / name).mkdir(parents=True)
        for i in range(5):
            canvas = Image.new("RGB", (400, 300), (200, 200, 200))
            side = int(rng.integers(130, 180))
            canvas.paste(head.resize((side, side)), (int(rng.integers(0, 400 - side)), int(rng.integers(0, 300 - side))))
            canvas.save(root / name / f"photo-{i}.jpg", quality=95)
    Image.new("RGB", (400, 300), (90, 120, 90)).save(root / "sad" / "no-face.jpg")
    head.resize((48, 48)).save(root / "happy" / "crop.png")  # a face crop already: kept whole

    decoded = decode_images(discover(root), 32, decode=face_crop_decoder(HaarDetector()), variant="faces-haar")
    assert {(s.path.name, s.reason) for s in decoded.skipped} == {("no-face.jpg", "no face found by the haar detector")}
    photo = root / "happy" / "photo-0.jpg"
    expected = crop_face(read_rgb(photo), HaarDetector().detect(read_rgb(photo))[0], 32)
    assert np.array_equal(decoded.images[decoded.paths.index(photo)].permute(1, 2, 0).numpy(), expected)

    run = tmp_path / "run"
    assert main(["train", str(root), "--crop-faces", "--arch", "resnet18", "--pretrained", "none", "--image-size",
                 "32", "--epochs", "1", "--freeze-epochs", "1", "--valid-fraction", "0.3", "--out", str(run),
                 "--no-progress", "--face-detector", "haar"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert [(Path(s["path"]).name, s["reason"]) for s in metrics["skipped"]] == [
        ("no-face.jpg", "no face found by the haar detector")
    ]
    assert "no-face.jpg" in (run / "report.html").read_text()
    assert len((run / "split.csv").read_text().splitlines()) == 1 + 11
    assert json.loads((run / "config.json").read_text())["data"]["crop_faces"] is True
