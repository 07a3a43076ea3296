from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ferlab.checkpoint import FORMAT_VERSION, ModelCard, load_model, save_model
from ferlab.models import build_model, get_architecture
from ferlab.predict import Predictor


@pytest.fixture
def saved(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    arch = get_architecture("mobilenet_v2")
    model = build_model(arch.name, 3)
    card = ModelCard(arch=arch.name, class_names=("happy", "sad", "surprise"), image_size=32,
                     mean=arch.mean, std=arch.std, weight_source="test", metrics={"valid": {"accuracy": 0.5}})
    return save_model(model.eval(), card, tmp_path / "model.safetensors")


def test_round_trip_gives_identical_outputs(saved: Path) -> None:
    torch.manual_seed(0)
    original = build_model("mobilenet_v2", 3).eval()
    loaded, card = load_model(saved)
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(original(images), loaded(images))
    assert card.class_names == ("happy", "sad", "surprise") and card.metrics["valid"]["accuracy"] == 0.5
    # A run folder and the .json path name the same model.
    assert load_model(saved.parent)[1] == card == load_model(saved.with_suffix(".json"))[1]


def test_missing_or_newer_model_files_fail_clearly(saved: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="ferlab train"):
        load_model(tmp_path / "elsewhere")
    raw = json.loads(saved.with_suffix(".json").read_text())
    raw["format_version"] = FORMAT_VERSION + 1
    saved.with_suffix(".json").write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="upgrade ferlab"):
        load_model(saved)


def test_predictor_scores_files_folders_and_errors(saved: Path, tmp_path: Path) -> None:
    from PIL import Image

    folder = tmp_path / "faces"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(folder / f"{i}.png")
    (folder / "readme.txt").write_text("hello")
    predictor = Predictor.load(saved, device="cpu")
    results = predictor.predict_files([folder, tmp_path / "missing.jpg"], batch_size=2)
    assert len(results) == 7
    good = [r for r in results if r.error is None]
    assert len(good) == 5
    for row in good:
        assert sum(row.scores.values()) == pytest.approx(1.0, abs=1e-5)
        assert row.label == max(row.scores, key=row.scores.__getitem__)
    errors = {Path(r.path).name: r.error for r in results if r.error}
    assert errors == {"readme.txt": "not an image file extension (.txt)", "missing.jpg": "no such file or folder"}
    # Batching does not change the scores.
    one_by_one = predictor.predict_files(sorted(folder.glob("*.png")), batch_size=1)
    for single, batched in zip(one_by_one, good, strict=True):
        for name, score in single.scores.items():
            assert score == pytest.approx(batched.scores[name], abs=1e-5)
