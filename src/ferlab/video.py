"""Video: label the faces in every n-th frame and follow each person across frames.

`label_video` reads a clip with OpenCV, detects the faces of every `every`-th frame, scores
their crops with a `Predictor`, and gives each face the id of the track it continues (a box
whose centre is within one face width of a track's last box continues it, nearest first;
with every 5th frame of a clip a face moves too far between labelled frames for their boxes
to overlap reliably; tracks unseen for a while end). The result is data, one `FaceRow` per face and frame; `write_rows` writes
the per-frame CSV, and report.plot_expression_over_time and `write_annotated_video` render it.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ferlab.detect import Face, crop_face
from ferlab.predict import Predictor
from ferlab.report import plot_expression_over_time

__all__ = [
    "VIDEO_EXTENSIONS", "FaceRow", "Tracker", "VideoResult", "label_video", "label_videos", "write_annotated_video",
    "write_rows",
]

VIDEO_EXTENSIONS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"})
Box = tuple[int, int, int, int]


def _distance(a: Box, b: Box) -> float:
    """Distance between the boxes' centres, in units of their mean side."""
    dx = (a[0] + a[2] / 2) - (b[0] + b[2] / 2)
    dy = (a[1] + a[3] / 2) - (b[1] + b[3] / 2)
    return float(np.hypot(dx, dy)) / max(1.0, (a[2] + a[3] + b[2] + b[3]) / 4)


@dataclass
class Tracker:
    """Greedy nearest-centre matching of each frame's boxes to the tracks' last boxes."""

    max_distance: float = 1.0  # centre shift, in face widths, that still continues a track
    max_missed: int = 3  # processed frames a track may go unseen before it ends
    _tracks: dict[int, tuple[Box, int]] = field(default_factory=dict)  # id -> (last box, missed)
    _next_id: int = 0

    def update(self, boxes: Sequence[Box]) -> list[int]:
        """An id per box, in order: a continued track's id or a new one."""
        pairs = sorted(
            (_distance(box, last), i, track) for i, box in enumerate(boxes) for track, (last, _) in self._tracks.items()
        )
        ids: dict[int, int] = {}  # box index -> track id
        for distance, i, track in pairs:  # nearest first
            if distance > self.max_distance:
                break
            if i not in ids and track not in ids.values():
                ids[i] = track
        for i in range(len(boxes)):
            if i not in ids:
                ids[i] = self._next_id
                self._next_id += 1
        tracks = {
            track: (last, missed + 1)
            for track, (last, missed) in self._tracks.items()
            if track not in ids.values() and missed + 1 <= self.max_missed
        }
        tracks.update({ids[i]: (box, 0) for i, box in enumerate(boxes)})
        self._tracks = tracks
        return [ids[i] for i in range(len(boxes))]


@dataclass(frozen=True)
class FaceRow:
    """One face in one processed frame (a row of the per-frame CSV)."""

    frame: int
    time: float  # seconds from the start
    face_id: int  # the track: the same person keeps it across frames
    box: Box
    label: str
    scores: dict[str, float]


@dataclass(frozen=True)
class VideoResult:
    path: Path
    fps: float
    frames: int  # frames in the clip
    processed: int  # frames labelled (every n-th)
    rows: tuple[FaceRow, ...]
    seconds: float  # wall time of reading, detecting and scoring

    @property
    def frames_per_second(self) -> float:
        """Processed frames per second of wall time."""
        return self.processed / self.seconds if self.seconds else 0.0


def _frames(path: Path) -> tuple[Iterator[np.ndarray], float]:
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise ValueError(f"cannot read the video {str(path)!r} (unknown format, or not a video)")
    fps = float(capture.get(cv2.CAP_PROP_FPS)) or 25.0

    def frames() -> Iterator[np.ndarray]:
        try:
            while True:
                ok, frame = capture.read()
                if not ok:
                    return
                yield np.ascontiguousarray(frame[:, :, ::-1])  # BGR -> RGB
        finally:
            capture.release()

    return frames(), fps


def label_video(predictor: Predictor, path: Path, every: int = 5) -> VideoResult:
    """Faces and labels in frames 0, every, 2*every, ... of the clip at `path`."""
    if every < 1:
        raise ValueError(f"--every must be 1 or more, not {every}")
    if predictor.detector is None:
        raise ValueError("labelling a video needs a face detector: use --faces auto or a detector's name")
    started = time.perf_counter()
    frames, fps = _frames(path)
    tracker = Tracker()
    rows: list[FaceRow] = []
    count = processed = 0
    for index, frame in enumerate(frames):
        count += 1
        if index % every:
            continue
        processed += 1
        faces: list[Face] = predictor.detector.detect(frame)
        ids = tracker.update([f.box for f in faces])
        if not faces:
            continue
        crops = np.stack([crop_face(frame, face, predictor.card.image_size, align=predictor.align_faces)
                          for face in faces])
        probabilities, _ = predictor.predict_arrays(crops)
        for face, face_id, row in zip(faces, ids, probabilities, strict=True):
            scores = {n: float(p) for n, p in zip(predictor.class_names, row, strict=True)}
            rows.append(FaceRow(index, index / fps, face_id, face.box, predictor.label_for(row), scores))
    return VideoResult(path, fps, count, processed, tuple(rows), time.perf_counter() - started)


def write_rows(result: VideoResult, class_names: Sequence[str], path: Path) -> Path:
    """The per-frame CSV: frame, time, face id, box, label, a probability per class."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["frame", "time", "face_id", "x", "y", "width", "height", "label", *class_names])
        for r in result.rows:
            writer.writerow([r.frame, f"{r.time:.3f}", r.face_id, *r.box, r.label,
                             *(f"{r.scores[n]:.6f}" for n in class_names)])
    return path


def write_annotated_video(result: VideoResult, every: int, path: Path) -> Path:
    """The processed frames with each face's box, id and label drawn, at the clip's pace."""
    import cv2

    frames, _ = _frames(result.path)
    by_frame: dict[int, list[FaceRow]] = {}
    for row in result.rows:
        by_frame.setdefault(row.frame, []).append(row)
    writer = None
    try:
        for index, frame in enumerate(frames):
            if index % every:
                continue
            image = np.ascontiguousarray(frame[:, :, ::-1])  # RGB -> BGR for OpenCV
            if writer is None:
                fourcc = cv2.VideoWriter_fourcc(*"mp4v")  # type: ignore[attr-defined]
                writer = cv2.VideoWriter(str(path), fourcc, max(1.0, result.fps / every), image.shape[1::-1])
            for row in by_frame.get(index, []):
                x, y, w, h = row.box
                cv2.rectangle(image, (x, y), (x + w, y + h), (40, 40, 255), 2)
                cv2.putText(image, f"#{row.face_id} {row.label}", (x, max(12, y - 5)), cv2.FONT_HERSHEY_SIMPLEX,
                            0.5, (40, 40, 255), 1, cv2.LINE_AA)
            writer.write(image)
    finally:
        if writer is not None:
            writer.release()
    return path


def label_videos(predictor: Predictor, videos: Sequence[Path], every: int, out: Path, annotate: bool,
                 echo: Callable[[str], None] = print) -> list[VideoResult]:
    """`label_video` for each clip, writing out/<clip>/frames.csv, expression.png and, with
    `annotate`, annotated.mp4; says what it did through `echo`."""
    results = []
    for video in videos:
        result = label_video(predictor, video, every)
        folder = out / video.stem
        folder.mkdir(parents=True, exist_ok=True)
        table = write_rows(result, predictor.class_names, folder / "frames.csv")
        plot = plot_expression_over_time([(r.time, r.face_id, r.scores) for r in result.rows],
                                         predictor.class_names, folder / "expression.png")
        if annotate:
            write_annotated_video(result, every, folder / "annotated.mp4")
        people = {r.face_id for r in result.rows}
        echo(f"{video}: {result.processed} of {result.frames} frames labelled ({result.frames_per_second:.1f} "
             f"frames/s), {len(result.rows)} faces, {len(people)} face id(s); {table} and {plot}")
        results.append(result)
    return results
