"""A short run on FER2013 (the study's five classes); skipped when ../shared/data is absent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from conftest import REAL_DATA
from ferlab.cli import main

CLASSES = ("angry", "happy", "neutral", "sad", "surprise")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.real_data,
    pytest.mark.skipif(not (REAL_DATA / "train").is_dir(), reason=f"{REAL_DATA} is absent"),
]


def _sample(split: str, per_class: int, target: Path) -> Path:
    """Symlinks to the first `per_class` images of each class (sorted): no data is copied."""
    for name in CLASSES:
        (target / name).mkdir(parents=True)
        for source in sorted((REAL_DATA / split / name).glob("*.jpg"))[:per_class]:
            (target / name / source.name).symlink_to(source)
    return target


def test_brief_training_on_fer2013(tmp_path: Path) -> None:
    train = _sample("train", 200, tmp_path / "train")
    test = _sample("test", 30, tmp_path / "test")
    run = tmp_path / "run"
    code = main(["train", str(train), "--arch", "efficientnet_lite0", "--test", str(test),
                 "--image-size", "64", "--batch-size", "32", "--epochs", "2", "--out", str(run),
                 "--no-progress"])
    assert code == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["valid"]["images"] == 200 and metrics["test"]["images"] == 150
    assert set(metrics["test"]["per_class"]) == set(CLASSES)
    assert metrics["pretrained"] is True
    assert sum(map(sum, metrics["test"]["confusion_matrix"])) == 150
    # This copy's training images are heavily blurred while its test images are sharp (measured
    # sharpness 1.6 vs 5.3 per 100 px); accuracy on test says little until that is known.
    assert any("test images differ" in w and "sharper" in w for w in metrics["data_shift_warnings"])


@pytest.mark.parametrize(("detector", "least_recall"), [("mtcnn", 0.85), ("haar", 0.6)])
def test_fer2013_faces_pasted_on_photos_are_found(detector: str, least_recall: float) -> None:
    """12 composites of 3 FER2013 test crops each (48 px, upscaled): the boxes found match the
    pasted faces; the thresholds sit below what benchmarks/faces.py measures on 40 photos."""
    pytest.importorskip("skimage")
    from ferlab.detect import DetectorUnavailable, make_detector
    from photos import iou, paste_faces

    try:
        finder = make_detector(detector)
    except DetectorUnavailable as error:
        pytest.skip(str(error))
    files = sorted(p for name in CLASSES for p in (REAL_DATA / "test" / name).glob("*.jpg"))[::97]
    found = pasted = false_positives = 0
    for photo_index in range(12):
        faces = [Image.open(files[(3 * photo_index + k) % len(files)]) for k in range(3)]
        photo, boxes = paste_faces(faces, seed=photo_index)
        detected = [f.box for f in finder.detect(photo)]
        found += sum(any(iou(d, b) >= 0.3 for d in detected) for b in boxes)
        false_positives += sum(not any(iou(d, b) >= 0.3 for b in boxes) for d in detected)
        pasted += len(boxes)
    print(f"{detector}: {found} of {pasted} faces found, {false_positives} false positives")
    assert found / pasted >= least_recall, (found, pasted)
    if detector == "mtcnn":
        assert false_positives <= 2
