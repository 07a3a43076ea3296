"""MTCNN, a face detector with landmarks (Zhang et al. 2016, "Joint Face Detection and
Alignment using Multi-task Cascaded Convolutional Networks"): three small networks in turn.

- P-Net runs fully convolutionally over an image pyramid: every 12x12 window (stride 2) gets
  a face probability and four box-edge offsets.
- R-Net rescores 24x24 crops of the windows that survive, and refines their boxes.
- O-Net rescores 48x48 crops, refines the boxes again and places five landmarks: the eyes,
  the nose and the corners of the mouth (used to level the eyes in `detect.crop_face`).
Between stages, non-maximum suppression merges overlapping boxes and boxes are made square.
Its score is O-Net's face probability (0-1), unlike the Haar cascade's unbounded one.

Weights: the trained networks that the facenet-pytorch wheel (MIT) ships as state dicts,
`facenet_pytorch/data/{pnet,rnet,onet}.pt`. facenet-pytorch's own requirements pin torch<2.3,
so it is installed with `pip install --no-deps facenet-pytorch` and never imported: only its
weight files are read, with `torch.load(weights_only=True)` (tensors, no code), into the
networks defined here, every tensor's shape checked. FERLAB_MTCNN_WEIGHTS may name another
folder holding the three files.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import nms, roi_align

from ferlab.detect import DetectorUnavailable, Face

__all__ = ["MTCNNDetector", "ONet", "PNet", "RNet", "find_mtcnn_weights", "load_networks"]

WEIGHT_FILES = ("pnet.pt", "rnet.pt", "onet.pt")
HOW_TO_GET = (
    "install the facenet-pytorch wheel, which ships them, without its dependencies (they pin an old "
    "torch): pip install --no-deps facenet-pytorch==2.6.0; or set FERLAB_MTCNN_WEIGHTS to a folder "
    "holding pnet.pt, rnet.pt and onet.pt"
)


def _flatten(x: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) -> (N, W*H*C): the order the dense layers were trained with (the original
    networks ran on transposed images, channels last)."""
    return x.permute(0, 3, 2, 1).flatten(1)


class PNet(nn.Module):
    """12x12 windows, stride 2 -> face probability (N, H', W') and box offsets (N, 4, H', W')."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)  # face / not face
        self.conv4_2 = nn.Conv2d(32, 4, 1)  # box-edge offsets, in window sides

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return F.softmax(self.conv4_1(x), dim=1)[:, 1], self.conv4_2(x)


class RNet(nn.Module):
    """(N, 3, 24, 24) crops -> face probability (N,) and box offsets (N, 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)  # -> (N, 64, 3, 3)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu4(self.dense4(_flatten(self.prelu3(self.conv3(x)))))
        return F.softmax(self.dense5_1(x), dim=1)[:, 1], self.dense5_2(x)


class ONet(nn.Module):
    """(N, 3, 48, 48) crops -> face probability (N,), box offsets (N, 4) and landmarks (N, 10):
    five x then five y, as fractions of the crop's side."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)  # -> (N, 128, 3, 3)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu5(self.dense5(_flatten(self.prelu4(self.conv4(x)))))
        return F.softmax(self.dense6_1(x), dim=1)[:, 1], self.dense6_2(x), self.dense6_3(x)


def find_mtcnn_weights() -> Path:
    """The folder holding pnet.pt, rnet.pt and onet.pt: FERLAB_MTCNN_WEIGHTS, else the
    installed facenet-pytorch wheel's data folder (located, not imported)."""
    configured = os.environ.get("FERLAB_MTCNN_WEIGHTS")
    if configured:
        folder = Path(configured)
    else:
        spec = find_spec("facenet_pytorch")
        if spec is None or not spec.submodule_search_locations:
            raise DetectorUnavailable(f"face detector 'mtcnn' needs its weights: {HOW_TO_GET}")
        folder = Path(next(iter(spec.submodule_search_locations))) / "data"
    missing = [name for name in WEIGHT_FILES if not (folder / name).is_file()]
    if missing:
        raise DetectorUnavailable(f"face detector 'mtcnn': {', '.join(missing)} not found in {folder}; {HOW_TO_GET}")
    return folder


def _load(network: nn.Module, path: Path) -> nn.Module:
    state = torch.load(path, map_location="cpu", weights_only=True)
    expected = network.state_dict()
    if not isinstance(state, dict) or set(state) != set(expected):
        raise DetectorUnavailable(f"{path} is not an MTCNN {type(network).__name__} state dict")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise DetectorUnavailable(
                f"{path}: {name} has shape {tuple(tensor.shape)}, expected {tuple(expected[name].shape)}"
            )
    network.load_state_dict(state)
    return network.eval()


def load_networks(folder: Path) -> tuple[PNet, RNet, ONet]:
    pnet, rnet, onet = (_load(n, folder / f) for n, f in zip((PNet(), RNet(), ONet()), WEIGHT_FILES, strict=True))
    return pnet, rnet, onet  # type: ignore[return-value]


def _nms_min(boxes: torch.Tensor, scores: torch.Tensor, threshold: float) -> torch.Tensor:
    """Greedy suppression by intersection over the smaller box (drops a box inside another,
    which IoU keeps); indices kept, best first."""
    order = scores.argsort(descending=True)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    keep: list[int] = []
    while len(order):
        best, rest = order[0], order[1:]
        keep.append(int(best))
        top_left = torch.maximum(boxes[best, :2], boxes[rest, :2])
        bottom_right = torch.minimum(boxes[best, 2:], boxes[rest, 2:])
        overlap = (bottom_right - top_left).clamp(min=0).prod(dim=1)
        order = rest[overlap / torch.minimum(areas[best], areas[rest]) <= threshold]
    return torch.tensor(keep, dtype=torch.long)


def _regress(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Move each edge of (K, 4) x1 y1 x2 y2 boxes by its offset, in box sides."""
    sides = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)  # w h w h
    return boxes + offsets * sides


def _squared(boxes: torch.Tensor) -> torch.Tensor:
    """Each box as the square on its centre with its longer side."""
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    half = (boxes[:, 2:] - boxes[:, :2]).max(dim=1, keepdim=True).values / 2
    return torch.cat([centres - half, centres + half], dim=1)


class MTCNNDetector:
    """The three-stage cascade, on the CPU (a photo at a time); see the module docstring."""

    name = "mtcnn"

    def __init__(
        self, weights: Path | None = None, min_size_fraction: float = 0.04, min_face: int = 20,
        thresholds: Sequence[float] = (0.6, 0.7, 0.9), scale_factor: float = 0.709,
    ) -> None:
        self.pnet, self.rnet, self.onet = load_networks(weights or find_mtcnn_weights())
        # Channels-last convolutions and pooling run 1.5-3 times as fast on a CPU.
        for network in (self.pnet, self.rnet, self.onet):
            network.to(memory_format=torch.channels_last)
        self.min_size_fraction = min_size_fraction  # smallest face, as a share of the shorter side
        self.min_face = min_face  # ... and never below this many pixels
        # Per stage. O-Net's 0.9 rather than the usual 0.7: on benchmarks/faces.py (FER2013
        # faces on noise) it cut false positives from 0.075 to 0.025 a photo at the same recall.
        self.thresholds = tuple(thresholds)
        self.scale_factor = scale_factor  # pyramid step: 0.709 = 1/sqrt(2) in area

    def _scales(self, height: int, width: int) -> list[float]:
        smallest = max(self.min_face, min(height, width) * self.min_size_fraction)
        scale, scales = 12.0 / smallest, []
        while min(height, width) * scale >= 12:
            scales.append(scale)
            scale *= self.scale_factor
        return scales

    def _propose(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 1: P-Net windows over the pyramid -> regressed square boxes (K, 4), scores (K,)."""
        height, width = image.shape[-2:]
        found_boxes, found_scores = [], []
        scaled = image
        for scale in self._scales(height, width):
            size = (math.ceil(height * scale), math.ceil(width * scale))
            # Each level from the one before (a fraction of the work of resizing the whole
            # frame each time); antialiased bilinear is close to the area resampling the
            # networks were trained on, at half its cost.
            scaled = F.interpolate(scaled, size=size, mode="bilinear", antialias=True, align_corners=False)
            probability, offsets = self.pnet(scaled)  # (1, H', W'), (1, 4, H', W')
            rows, cols = torch.nonzero(probability[0] >= self.thresholds[0], as_tuple=True)
            if not len(rows):
                continue
            corners = torch.stack([cols, rows], dim=1).float() * 2  # window corner in the scaled image
            boxes = torch.cat([corners, corners + 12], dim=1) / scale
            scores = probability[0, rows, cols]
            keep = nms(boxes, scores, 0.5)
            found_boxes.append(_regress(boxes[keep], offsets[0, :, rows[keep], cols[keep]].T))
            found_scores.append(scores[keep])
        if not found_boxes:
            return torch.zeros(0, 4), torch.zeros(0)
        boxes, scores = torch.cat(found_boxes), torch.cat(found_scores)
        keep = nms(boxes, scores, 0.7)
        return _squared(boxes[keep]), scores[keep]

    @staticmethod
    def _crops(image: torch.Tensor, boxes: torch.Tensor, size: int) -> torch.Tensor:
        """(K, 3, size, size) resampled crops of the boxes; outside the photo is black, as in
        training (the image is shifted so that roi_align's zero padding is black)."""
        rois = torch.cat([torch.zeros(len(boxes), 1), boxes], dim=1)
        # 2x2 bilinear samples per output pixel: an adaptive count (one per source pixel) took
        # 13 times as long on hundreds of candidate boxes, for no change in recall (benchmarks/faces.py).
        return roi_align(image + 1, rois, (size, size), spatial_scale=1.0, sampling_ratio=2, aligned=True) - 1

    @torch.inference_mode()
    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in uint8 (H, W, 3) RGB, left to right, each with its five landmarks."""
        tensor = torch.tensor(image).permute(2, 0, 1)[None].float()  # a copy: `image` may be read-only
        tensor = ((tensor - 127.5) / 128.0).contiguous(memory_format=torch.channels_last)  # as trained
        boxes, scores = self._propose(tensor)
        if len(boxes):  # stage 2
            probability, offsets = self.rnet(self._crops(tensor, boxes, 24))
            sure = probability >= self.thresholds[1]
            boxes, scores, offsets = boxes[sure], probability[sure], offsets[sure]
            keep = nms(boxes, scores, 0.7)
            boxes, scores = _squared(_regress(boxes[keep], offsets[keep])), scores[keep]
        if not len(boxes):
            return []
        probability, offsets, marks = self.onet(self._crops(tensor, boxes, 48))  # stage 3
        sure = probability >= self.thresholds[2]
        boxes, scores, offsets, marks = boxes[sure], probability[sure], offsets[sure], marks[sure]
        sides = (boxes[:, 2:] - boxes[:, :2])  # (K, 2) w h
        points = torch.stack([boxes[:, :1] + marks[:, :5] * sides[:, :1],
                              boxes[:, 1:2] + marks[:, 5:] * sides[:, 1:]], dim=2)  # (K, 5, 2)
        boxes = _regress(boxes, offsets)
        keep = _nms_min(boxes, scores, 0.7)
        height, width = image.shape[:2]
        faces = []
        for box, score, landmarks in zip(boxes[keep].tolist(), scores[keep].tolist(), points[keep].tolist(),
                                         strict=True):
            left, top = max(0, round(box[0])), max(0, round(box[1]))
            right, bottom = min(width, round(box[2])), min(height, round(box[3]))
            if right - left >= 4 and bottom - top >= 4:
                faces.append(Face((left, top, right - left, bottom - top), float(score),
                                  tuple((float(x), float(y)) for x, y in landmarks)))
        return sorted(faces, key=lambda f: (f.box[0], f.box[1]))
