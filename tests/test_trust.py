"""Trustworthy results through the command line: calibration in the run folder, --tta,
--min-confidence, train/test overlap, class balance, and --exclude."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest

from ferlab.cli import main

TRAIN = ["--arch", "efficientnet_lite0", "--image-size", "32", "--batch-size", "16", "--epochs", "1", "--no-progress"]


@pytest.fixture(scope="module")
def overlapping_test(faces: Path, test_faces: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The test faces plus two byte-identical copies of training images."""
    root = tmp_path_factory.mktemp("overlap") / "test"
    shutil.copytree(test_faces, root)
    for name in ("happy", "sad"):
        source = sorted((faces / name).glob("*.png"))[0]
        shutil.copy(source, root / name / f"copied-{source.name}")
    return root


@pytest.fixture(scope="module")
def run(faces: Path, overlapping_test: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("trust") / "run"
    assert main(["train", str(faces), "--test", str(overlapping_test), "--out", str(folder), *TRAIN]) == 0
    return folder


def test_run_is_calibrated_and_measures_tta(run: Path) -> None:
    metrics = json.loads((run / "metrics.json").read_text())
    calibration = metrics["calibration"]
    assert set(calibration) == {"valid", "test"}
    temperature = json.loads((run / "model.json").read_text())["temperature"]
    assert temperature > 0 and temperature != 1.0
    for split in ("valid", "test"):
        block = calibration[split]
        assert block["temperature"] == temperature
        assert 0 <= block["ece_after"] <= 1 and 0 <= block["ece_before"] <= 1
        assert sum(block["reliability_after"]["count"]) == metrics[split]["images"]
        assert metrics[split]["temperature"] == temperature
    # Fitted on valid: its NLL cannot get worse than at T = 1.
    assert calibration["valid"]["nll_after"] <= calibration["valid"]["nll_before"] + 1e-9
    for split in ("valid", "test"):
        gain = metrics["tta"][split]
        assert gain["gain"] == pytest.approx(gain["accuracy_tta"] - gain["accuracy"])
        assert gain["accuracy"] == pytest.approx(metrics[split]["accuracy"])
    assert (run / "reliability_diagram.png").is_file()
    report = (run / "report.html").read_text()
    assert "Calibration and test-time augmentation" in report and "TTA gain" in report


def test_overlap_with_training_files_is_said_loudly(
    run: Path, overlapping_test: Path, faces: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["overlap_warnings"]) == 1 and "2 of the 22 test images" in metrics["overlap_warnings"][0]
    assert "byte-identical" in (run / "report.html").read_text()
    assert main(["evaluate", str(run), str(faces), "--format", "json"]) == 0
    captured = capsys.readouterr()
    assert "60 of the 60" in json.loads(captured.out)["overlap_warnings"][0]
    assert "byte-identical" in captured.err


def test_predict_with_tta_and_min_confidence(run: Path, test_faces: Path, capsys: pytest.CaptureFixture[str]) -> None:
    images = [str(p) for p in sorted((test_faces / "happy").glob("*.png"))[:3]]
    assert main(["predict", str(run), *images, "--format", "json"]) == 0
    plain = json.loads(capsys.readouterr().out)
    assert main(["predict", str(run), *images, "--format", "json", "--tta"]) == 0
    augmented = json.loads(capsys.readouterr().out)
    assert [r["scores"] for r in augmented] != [r["scores"] for r in plain]
    assert all(sum(r["scores"].values()) == pytest.approx(1.0, abs=1e-5) for r in augmented)
    assert main(["predict", str(run), *images, "--format", "json", "--min-confidence", "0.999"]) == 0
    uncertain = json.loads(capsys.readouterr().out)
    assert [r["label"] for r in uncertain] == ["uncertain"] * 3
    assert [r["scores"] for r in uncertain] == [r["scores"] for r in plain]  # scores are kept
    assert main(["predict", str(run), *images, "--min-confidence", "1.5"]) == 2
    assert main(["evaluate", str(run), str(test_faces), "--tta"]) == 0
    assert "test-time augmentation: accuracy" in capsys.readouterr().out


def test_balance_options_change_what_an_epoch_sees(faces: Path, tmp_path: Path) -> None:
    unbalanced = tmp_path / "data"
    shutil.copytree(faces, unbalanced)
    for extra in sorted((unbalanced / "surprise").glob("*.png"))[4:]:
        extra.unlink()  # surprise: 4 images, the other classes 12
    for balance, train_images in (("oversample", 5 * 10), ("undersample", 5 * 3)):
        out = tmp_path / balance
        assert main(["train", str(unbalanced), "--balance", balance, "--loss", "focal", "--out", str(out), *TRAIN]) == 0
        config = json.loads((out / "config.json").read_text())
        assert config["train"]["balance"] == balance and config["train"]["loss"] == "focal"
        counts = {row["class"]: int(row["train"]) for row in csv.DictReader((out / "classes.csv").open())}
        assert counts["surprise"] == 3 and counts["happy"] == 10  # the split itself is untouched
        # Every epoch draws each class up to the largest one's count, or down to the smallest's.
        epochs = json.loads((out / "metrics.json").read_text())["training"]["epochs_run"]
        state = json.loads((out / "resume.json").read_text())
        assert state["images_seen"] == train_images * epochs


def test_compare_balances_on_one_split(faces: Path, tmp_path: Path) -> None:
    out = tmp_path / "compare"
    args = ["compare", str(faces), "--arch", "efficientnet_lite0", "--balance", "none", "weighted-loss",
            "--out", str(out), *TRAIN[2:]]
    assert main(args) == 0
    table = json.loads((out / "compare.json").read_text())
    assert [(r["arch"], r["balance"]) for r in table["rows"]] == [
        ("efficientnet_lite0-none", "none"), ("efficientnet_lite0-weighted-loss", "weighted-loss")
    ]
    assert all(set(r["recall"]) == {"angry", "happy", "neutral", "sad", "surprise"} for r in table["rows"])
    splits = [(out / name / "split.csv").read_text() for name in ("efficientnet_lite0-none", "efficientnet_lite0-weighted-loss")]
    assert splits[0] == splits[1]
    assert "recall per class" in (out / "compare.html").read_text()
