"""Face detection benchmark: recall and false positives on composite photos.

    python benchmarks/faces.py            # 40 composites of 3 faces each
    python benchmarks/faces.py --photos 10

Each composite pastes 3 faces, at random sizes (80-260 px) and non-overlapping random
places, on a 1280x960 canvas of smooth noise, saved as JPEG (quality 85) and read back. The
faces are FER2013 test crops (sharp, 48 px, tightly cropped, upscaled) and, as a control,
scikit-image's astronaut head when scikit-image is installed. A face is found when a
detected box overlaps its pasted square with IoU >= 0.3 (tight crops: the detector's box
covers the inner face). Prints recall, false positives per photo, and milliseconds per photo, and writes them to
benchmarks/results/faces-<date>.json.
"""

from __future__ import annotations

import argparse
import io
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from record import write_results

from ferlab.detect import make_detector

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "fer2013"
CLASSES = ("angry", "happy", "neutral", "sad", "surprise")
Box = tuple[int, int, int, int]


def _iou(a: Box, b: Box) -> float:
    w = max(0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    h = max(0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    return w * h / (a[2] * a[3] + b[2] * b[3] - w * h)


def _place(rng: np.random.Generator, sizes: list[int], width: int, height: int) -> list[Box]:
    boxes: list[Box] = []
    for size in sizes:
        for _ in range(200):
            box = (int(rng.integers(0, width - size)), int(rng.integers(0, height - size)), size, size)
            if all(_iou(box, other) == 0 for other in boxes):
                boxes.append(box)
                break
    return boxes


def composite(faces: list[Image.Image], rng: np.random.Generator, inner: tuple[float, float] = (0.0, 1.0)
              ) -> tuple[np.ndarray, list[Box]]:
    """A photo and its face boxes: `inner` (offset, side) is where the face sits inside each
    pasted square, as fractions of its side (a tight crop: (0, 1))."""
    noise = rng.normal(128, 30, (96, 128, 3)).clip(0, 255).astype(np.uint8)
    canvas = Image.fromarray(noise).resize((1280, 960), Image.Resampling.BILINEAR)
    boxes = _place(rng, [int(rng.integers(80, 261)) for _ in faces], 1280, 960)
    for face, (x, y, size, _) in zip(faces, boxes, strict=False):
        canvas.paste(face.convert("RGB").resize((size, size), Image.Resampling.BICUBIC), (x, y))
    buffer = io.BytesIO()
    canvas.save(buffer, "JPEG", quality=85)
    offset, side = inner
    faces_at = [(x + round(offset * s), y + round(offset * s), round(side * s), round(side * s)) for x, y, s, _ in boxes]
    return np.asarray(Image.open(buffer).convert("RGB")), faces_at


def measure(source: str, pick: Any, photos: int, detector_name: str, seed: int,
            inner: tuple[float, float] = (0.0, 1.0)) -> dict[str, Any]:
    detector = make_detector(detector_name)
    rng = np.random.default_rng(seed)
    found = total = false_positives = 0
    seconds = 0.0
    for _ in range(photos):
        photo, boxes = composite([pick(rng) for _ in range(3)], rng, inner)
        start = time.perf_counter()
        detected = [f.box for f in detector.detect(photo)]
        seconds += time.perf_counter() - start
        matched = [any(_iou(d, b) >= 0.3 for d in detected) for b in boxes]
        found += sum(matched)
        total += len(boxes)
        false_positives += sum(not any(_iou(d, b) >= 0.3 for b in boxes) for d in detected)
    return {"faces": source, "detector": detector_name, "photos": photos, "faces_pasted": total,
            "recall": found / total, "false_positives_per_photo": false_positives / photos,
            "ms_per_photo": 1000 * seconds / photos}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--photos", type=int, default=40)
    parser.add_argument("--detector", nargs="+", default=["haar", "mtcnn"], help="default: haar mtcnn")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results",
                        help="folder for the results JSON (default benchmarks/results)")
    args = parser.parse_args(argv)
    rows = []
    test = args.data / "test"
    files = sorted(p for c in CLASSES for p in (test / c).glob("*.jpg")) if test.is_dir() else []
    try:
        from skimage import data as skimage_data
    except ImportError:
        skimage_data = None
        print("scikit-image is not installed: no astronaut control", file=sys.stderr)
    for detector in args.detector:
        if files:
            rows.append(measure("FER2013 test crops", lambda rng: Image.open(files[int(rng.integers(len(files)))]),
                                args.photos, detector, seed=0))
        if skimage_data is not None:
            head = Image.fromarray(skimage_data.astronaut()[21:206, 132:317])  # the face plus a margin
            # The face (177, 66, 95, 95) sits 45 px into the 185 px head crop.
            rows.append(measure("astronaut head", lambda rng, head=head: head, args.photos, detector, seed=1,
                                inner=(45 / 185, 95 / 185)))
    for row in rows:
        print(f"{row['faces']:<20} {row['detector']}: recall {row['recall']:.3f} of {row['faces_pasted']} faces, "
              f"{row['false_positives_per_photo']:.2f} false positives per photo, {row['ms_per_photo']:.0f} ms per photo")
    print(f"written to {write_results('faces', rows, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
