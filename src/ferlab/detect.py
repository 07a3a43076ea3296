"""Face detection: find the faces in an ordinary photo and crop each as the model expects.

Models are trained on tight face crops; a photo has several faces, off-centre, small. A
detector returns boxes; `crop_face` cuts a square around each, with a margin like the
training crops', and resizes it to the model's input size. Backends sit behind one small
interface (`FaceDetector`), chosen by name; each works offline with weights that an
installed package ships:
- `haar`: OpenCV's Viola-Jones frontal-face cascade (shipped with opencv-python-headless 4.x,
  a dependency). Fast on a CPU; frontal faces only; its score is the cascade's level
  weight (higher is surer, no fixed scale).
- `mtcnn`: the three-network MTCNN cascade (mtcnn.py) with the weights that the
  facenet-pytorch wheel ships (installed with --no-deps). Finds turned and tilted faces
  too, scores them 0-1, and gives eye positions, which `crop_face(align=True)` levels.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from PIL import Image

from ferlab.data import Decoder, SkipImage, open_rgb, square_array

__all__ = [
    "DETECTORS", "DetectorUnavailable", "Face", "FaceDetector", "HaarDetector", "best_detector", "crop_face",
    "eye_angle", "face_crop_decoder", "is_face_crop", "make_detector",
]

DETECTORS = ("haar", "mtcnn")
# Images no larger than this (shorter side, px) are taken as face crops already under
# --faces auto: FER-style crops are 48 px, and a detector finds nothing in them.
CROP_MAX_SIDE = 160


@dataclass(frozen=True)
class Face:
    box: tuple[int, int, int, int]  # x, y, width, height in the photo's pixels
    score: float  # the detector's confidence, on its own scale
    # (x, y) in the photo's pixels of the eyes (the image's left one first), the nose and the
    # mouth's corners, where the detector gives them (mtcnn); None otherwise.
    landmarks: tuple[tuple[float, float], ...] | None = None


class FaceDetector(Protocol):
    name: str

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in uint8 (H, W, 3) RGB, left to right."""
        ...


class DetectorUnavailable(RuntimeError):
    """The backend's package is not installed; the message says what to install."""


class HaarDetector:
    """OpenCV's frontal-face Haar cascade."""

    name = "haar"

    # min_neighbors 7, not OpenCV's usual 3-5: on JPEG-compressed composites (tests/test_detect.py)
    # 5 found 1-2 faces in background noise at quality 60-75, 7 none, and all real faces still.
    def __init__(self, min_size_fraction: float = 0.04, min_neighbors: int = 7, scale_factor: float = 1.1) -> None:
        try:
            import cv2
        except ImportError as error:
            raise DetectorUnavailable(
                "face detector 'haar' needs OpenCV: pip install 'ferlab[faces]' (opencv-python-headless<5)"
            ) from error
        path = f"{cv2.data.haarcascades}haarcascade_frontalface_default.xml"  # type: ignore[attr-defined]
        self._cv2 = cv2
        self._cascade = cv2.CascadeClassifier(path)
        if self._cascade.empty():
            raise DetectorUnavailable(
                f"OpenCV {cv2.__version__} ships no Haar cascades ({path}); install opencv-python-headless<5"
            )
        self.min_size_fraction = min_size_fraction  # smallest face, as a share of the shorter side
        self.min_neighbors = min_neighbors  # overlapping detections a face needs: fewer false ones
        self.scale_factor = scale_factor

    def detect(self, image: np.ndarray) -> list[Face]:
        grey = self._cv2.cvtColor(np.ascontiguousarray(image), self._cv2.COLOR_RGB2GRAY)
        side = max(12, int(min(grey.shape) * self.min_size_fraction))
        boxes, _, weights = self._cascade.detectMultiScale3(
            grey, scaleFactor=self.scale_factor, minNeighbors=self.min_neighbors, minSize=(side, side),
            outputRejectLevels=True,
        )
        faces = [
            Face((int(x), int(y), int(w), int(h)), float(score))
            for (x, y, w, h), score in zip(boxes, np.ravel(weights), strict=True)
        ]
        return sorted(faces, key=lambda f: (f.box[0], f.box[1]))


def make_detector(name: str) -> FaceDetector:
    """The backend called `name`; an unknown name fails with the list of known ones, a known
    one whose weights are missing with how to install them (`DetectorUnavailable`)."""
    if name == "haar":
        return HaarDetector()
    if name == "mtcnn":
        from ferlab.mtcnn import MTCNNDetector  # imports torch networks: only when asked for

        return MTCNNDetector()
    raise ValueError(f"unknown face detector {name!r}; choose from {', '.join(DETECTORS)}")


def best_detector() -> str:
    """The detector that `--faces auto` uses: mtcnn where its weights are installed (on
    benchmarks/faces.py it finds 0.93 of FER2013 faces against the Haar cascade's 0.74, with
    0.03 false positives per photo against 1.3, in a fifth of the time), else haar."""
    from ferlab.mtcnn import find_mtcnn_weights

    try:
        find_mtcnn_weights()
    except DetectorUnavailable:
        return "haar"
    return "mtcnn"


def is_face_crop(image: np.ndarray, max_side: int = CROP_MAX_SIDE) -> bool:
    """Whether --faces auto takes `image` as a face crop already (small images are)."""
    return min(image.shape[:2]) <= max_side


def _square_around(image: np.ndarray, centre_x: float, centre_y: float, side: int) -> np.ndarray:
    """The (side, side, 3) square of `image` centred on the point, edge pixels repeated where
    it leaves the photo."""
    left, top = round(centre_x - side / 2), round(centre_y - side / 2)
    height, width = image.shape[:2]
    pad = max(0, -left, -top, left + side - width, top + side - height)
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge") if pad else image
    return padded[top + pad : top + pad + side, left + pad : left + pad + side]


def eye_angle(face: Face) -> float | None:
    """Degrees the line through the eyes turns clockwise from level (y grows downwards), or
    None when the detector gave no landmarks."""
    if not face.landmarks:
        return None
    (left_x, left_y), (right_x, right_y) = face.landmarks[:2]
    return math.degrees(math.atan2(right_y - left_y, right_x - left_x))


def crop_face(image: np.ndarray, face: Face, size: int, margin: float = 0.25, align: bool = False) -> np.ndarray:
    """A square uint8 (size, size, 3) around `face`: the box grown by `margin` of its side on
    every edge (training crops show some forehead and chin), edge pixels repeated where the
    square leaves the photo. `align`: turn the face about the box's centre so that its eyes
    are level, where the detector gave their positions."""
    x, y, w, h = face.box
    side = round(max(w, h) * (1 + 2 * margin))
    centre_x, centre_y = x + w / 2, y + h / 2
    angle = eye_angle(face) if align else None
    if angle is None:
        square = _square_around(image, centre_x, centre_y, side)
    else:
        # Turn a square large enough that the turned face's square has no empty corners
        # (sqrt 2 times the side), then cut the face's square from its middle.
        outer = math.ceil(side * math.sqrt(2)) + 2
        turned = Image.fromarray(_square_around(image, centre_x, centre_y, outer)).rotate(
            angle, resample=Image.Resampling.BILINEAR  # PIL turns anticlockwise: undoes a clockwise tilt
        )
        start = (outer - side) // 2
        square = np.asarray(turned)[start : start + side, start : start + side]
    return np.asarray(Image.fromarray(square).resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def face_crop_decoder(detector: FaceDetector, align: bool = False) -> Decoder:
    """A decoder for `decode_images` (training with --crop-faces): the largest face of each
    photo, cropped as `crop_face` does; an image no larger than a face crop is decoded as it
    is, and one with no face found is skipped with that reason."""
    lock = threading.Lock()  # decoding runs in a thread pool; OpenCV's cascade is not shared safely

    def decode(data: bytes, size: int) -> np.ndarray:
        image = open_rgb(data)
        photo = np.asarray(image, dtype=np.uint8)
        if is_face_crop(photo):
            return square_array(image, size)  # decoded once: the same square as decode_bytes
        with lock:
            faces = detector.detect(photo)
        if not faces:
            raise SkipImage(f"no face found by the {detector.name} detector")
        return crop_face(photo, max(faces, key=lambda f: f.box[2] * f.box[3]), size, align=align)

    return decode
