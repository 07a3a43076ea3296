"""Video benchmark: labelled frames per second of `ferlab predict MODEL clip.mp4`, per detector.

    python benchmarks/video.py                 # 1280x720, 100 frames, haar and mtcnn
    python benchmarks/video.py --frames 60 --detector mtcnn --background photo

Writes a clip (25 frames/s) of two faces, scikit-image's astronaut head at 160 and 220 px,
crossing a background in opposite directions: a photo (scikit-image's coffee cup, scaled
up) or smooth noise (textures everywhere: the detectors' hardest case), and labels every
frame with a
5-class efficientnet_lite0 at 64 px (the default recipe's network and size; its weights are
random, which costs the same time as trained ones) on the fastest engine here. Prints, per
detector: frames labelled per second of wall time (reading, detection, cropping and
scoring), faces found per frame, and how many track ids the tracker gave (2 is right), and
writes them to benchmarks/results/video-<date>.json.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from record import write_results

from ferlab.checkpoint import ModelCard, save_model
from ferlab.models import build_model, get_architecture
from ferlab.predict import Predictor
from ferlab.video import label_video


def write_clip(path: Path, frames: int, background_kind: str, width: int = 1280, height: int = 720) -> None:
    import cv2
    from skimage import data as skimage_data

    head = Image.fromarray(skimage_data.astronaut()[21:206, 132:317])  # the face plus a margin
    small, large = (np.asarray(head.resize((side, side))) for side in (160, 220))
    if background_kind == "photo":
        scene = Image.fromarray(skimage_data.coffee())
    else:
        rng = np.random.default_rng(0)
        scene = Image.fromarray(rng.normal(128, 30, (height // 10, width // 10, 3)).clip(0, 255).astype(np.uint8))
    background = np.asarray(scene.resize((width, height), Image.Resampling.BILINEAR))
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 25.0, (width, height))  # type: ignore[attr-defined]
    step = (width - 240) / max(1, frames - 1)
    for i in range(frames):
        frame = background.copy()
        left = round(10 + step * i)
        frame[60:220, left : left + 160] = small  # left to right
        right = round(width - 230 - step * i)
        frame[420:640, right : right + 220] = large  # right to left
        writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
    writer.release()


def tiny_model(folder: Path) -> Path:
    torch.manual_seed(0)
    arch = get_architecture("efficientnet_lite0")
    card = ModelCard(arch=arch.name, class_names=("angry", "happy", "neutral", "sad", "surprise"), image_size=64,
                     mean=arch.mean, std=arch.std, pretrained=False)
    return save_model(build_model(arch.name, 5).eval(), card, folder / "model.safetensors")


def measure(model: Path, clip: Path, background: str, detector: str, every: int) -> dict[str, Any]:
    predictor = Predictor.load(model, "cpu", "auto", faces=detector)
    assert predictor.detector is not None
    # Warm-up: first-call costs (ONNX session, thread pools) are not per-frame costs.
    predictor.detector.detect(np.zeros((720, 1280, 3), np.uint8))
    predictor.predict_arrays(np.zeros((2, 64, 64, 3), np.uint8))
    result = label_video(predictor, clip, every)
    return {
        "background": background, "detector": detector, "every": every, "frames": result.frames, "labelled": result.processed,
        "frames_per_second": result.frames_per_second, "engine": predictor.engine.name,
        "faces_per_frame": len(result.rows) / max(1, result.processed),
        "track_ids": len({r.face_id for r in result.rows}),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--background", nargs="+", default=["photo", "noise"], choices=("photo", "noise"))
    parser.add_argument("--detector", nargs="+", default=["haar", "mtcnn"])
    parser.add_argument("--every", type=int, default=1, help="label every N-th frame (default 1: all)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results",
                        help="folder for the results JSON (default benchmarks/results)")
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        model = tiny_model(Path(folder))
        for background in args.background:
            clip = Path(folder) / f"{background}.mp4"
            write_clip(clip, args.frames, background)
            rows.extend(measure(model, clip, background, detector, args.every) for detector in args.detector)
    for row in rows:
        print(f"{row['background']:<6} {row['detector']:<6} {row['frames_per_second']:.1f} labelled frames/s (1280x720, {row['labelled']} of "
              f"{row['frames']} frames, engine {row['engine']}), {row['faces_per_frame']:.2f} faces per frame, "
              f"{row['track_ids']} track ids")
    print(f"written to {write_results('video', rows, args.out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
