"""Inference engines: ONNX export parity, reuse, re-export, and fallback to PyTorch."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ferlab.checkpoint import ModelCard, save_model
from ferlab.cli import main
from ferlab.engine import (
    EngineUnavailable,
    Parity,
    TorchEngine,
    check_parity,
    onnx_runtime_available,
    select_engine,
)
from ferlab.models import build_model, get_architecture
from ferlab.predict import Predictor

needs_onnx = pytest.mark.skipif(not onnx_runtime_available(), reason="onnxruntime/onnx not installed")
CLASSES = ("happy", "sad", "surprise")


def _saved(tmp_path: Path, arch_name: str = "mobilenet_v2", seed: int = 0) -> Path:
    torch.manual_seed(seed)
    arch = get_architecture(arch_name)
    model = build_model(arch.name, len(CLASSES)).eval()
    card = ModelCard(arch=arch.name, class_names=CLASSES, image_size=32, mean=arch.mean, std=arch.std)
    return save_model(model, card, tmp_path / "run" / "model.safetensors")


def _faces(tmp_path: Path, count: int = 6) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(0)
    paths = []
    for i in range(count):
        path = tmp_path / f"face{i}.png"
        Image.fromarray(rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@needs_onnx
@pytest.mark.parametrize("arch_name", ["mobilenet_v2", "efficientnet_lite0", "resnet18"])
def test_onnx_engine_matches_pytorch(tmp_path: Path, arch_name: str) -> None:
    weights = _saved(tmp_path, arch_name)
    onnx_predictor = Predictor.load(weights, device="cpu", engine="onnx")
    torch_predictor = Predictor.load(weights, device="cpu", engine="torch")
    assert onnx_predictor.engine.name == "onnxruntime" and torch_predictor.engine.name == "torch"
    assert weights.with_suffix(".onnx").is_file()
    faces = _faces(tmp_path)
    for a, b in zip(onnx_predictor.predict_files(faces), torch_predictor.predict_files(faces), strict=True):
        assert a.label == b.label
        for name in CLASSES:
            assert a.scores[name] == pytest.approx(b.scores[name], abs=1e-4)


@needs_onnx
def test_auto_reuses_a_matching_export_and_redoes_a_stale_one(tmp_path: Path) -> None:
    weights = _saved(tmp_path, seed=0)
    first = Predictor.load(weights, device="cpu")
    assert first.engine.name == "onnxruntime" and "ONNX Runtime" in first.engine_reason
    onnx_file = weights.with_suffix(".onnx")
    written = onnx_file.stat().st_mtime_ns
    Predictor.load(weights, device="cpu")
    assert onnx_file.stat().st_mtime_ns == written  # same weights: the file is reused
    # New weights under the same name: the old graph must not be trusted.
    _saved(tmp_path, seed=1)
    fresh = Predictor.load(weights, device="cpu")
    assert onnx_file.stat().st_mtime_ns != written
    faces = _faces(tmp_path, 3)
    reference = Predictor.load(weights, device="cpu", engine="torch").predict_files(faces)
    for a, b in zip(fresh.predict_files(faces), reference, strict=True):
        assert a.scores["sad"] == pytest.approx(b.scores["sad"], abs=1e-4)


def test_without_onnx_runtime_auto_falls_back_and_onnx_fails_clearly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    assert not onnx_runtime_available()
    weights = _saved(tmp_path)
    predictor = Predictor.load(weights, device="cpu")
    assert predictor.engine.name == "torch" and "not installed" in predictor.engine_reason
    assert not weights.with_suffix(".onnx").exists()
    rows = predictor.predict_files(_faces(tmp_path, 2))
    assert all(r.error is None and sum(r.scores.values()) == pytest.approx(1.0, abs=1e-5) for r in rows)
    with pytest.raises(EngineUnavailable, match=r"pip install 'ferlab\[onnx\]'"):
        Predictor.load(weights, device="cpu", engine="onnx")


class _WrongEngine:
    name = "wrong"

    def logits(self, inputs: torch.Tensor) -> torch.Tensor:
        return torch.zeros(inputs.shape[0], len(CLASSES))


def test_parity_check_catches_a_wrong_engine() -> None:
    torch.manual_seed(0)
    model = build_model("resnet18", len(CLASSES)).eval()
    assert check_parity(model, TorchEngine(model, torch.device("cpu")), 32).passed
    parity = check_parity(model, _WrongEngine(), 32)
    assert isinstance(parity, Parity) and not parity.passed and parity.max_logit_difference > 0


def test_unknown_engine_is_refused() -> None:
    model = build_model("resnet18", 2)
    with pytest.raises(ValueError, match="auto, onnx, torch"):
        select_engine(model, 32, None, torch.device("cpu"), "tensorrt")


@needs_onnx
def test_export_command_writes_a_checked_graph(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    weights = _saved(tmp_path)
    target = tmp_path / "exported" / "fer.onnx"
    assert main(["export", str(weights.parent), "--onnx", "--out", str(target)]) == 0
    assert target.is_file() and "matches PyTorch" in capsys.readouterr().out
    import onnx

    graph = onnx.load(str(target))
    assert graph.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
