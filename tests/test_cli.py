"""End to end through the command line: train -> evaluate -> predict on generated faces."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from ferlab.cli import main

ARTEFACTS = (
    "config.json", "history.csv", "classes.csv", "split.csv", "model.safetensors", "model.json",
    "metrics.json", "loss_curves.png", "confusion_matrix.png", "top_losses.png",
    "augmented_samples.png", "report.html",
)
TRAIN = ["--image-size", "32", "--batch-size", "16", "--epochs", "1", "--no-progress"]


@pytest.fixture(scope="module")
def messy_faces(faces: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The generated faces plus a truncated JPEG and a text file named .jpg."""
    root = tmp_path_factory.mktemp("messy") / "data"
    shutil.copytree(faces, root)
    jpeg = root / "happy" / "good.jpg"
    from PIL import Image

    Image.open(next((root / "happy").glob("*.png"))).convert("RGB").save(jpeg, quality=95)
    data = jpeg.read_bytes()
    (root / "happy" / "corrupt.jpg").write_bytes(data[: len(data) // 3])
    (root / "sad" / "notes.jpg").write_text("a text file with an image name")
    return root


@pytest.fixture(scope="module")
def trained_run(messy_faces: Path, test_faces: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("runs") / "lite0"
    code = main(["train", str(messy_faces), "--arch", "efficientnet_lite0", "--test", str(test_faces),
                 "--out", str(run), *TRAIN])
    assert code == 0
    return run


def test_train_leaves_every_artefact(trained_run: Path) -> None:
    for name in ARTEFACTS:
        assert (trained_run / name).is_file(), name
    metrics = json.loads((trained_run / "metrics.json").read_text())
    for split in ("valid", "test"):
        block = metrics[split]
        assert set(block["per_class"]) == {"angry", "happy", "neutral", "sad", "surprise"}
        assert 0.0 <= block["accuracy"] <= 1.0 and 0.0 <= block["macro_f1"] <= 1.0
        assert sum(map(sum, block["confusion_matrix"])) == block["images"]
    assert metrics["test"]["images"] == 20
    assert metrics["training"]["images_per_second"] > 0 and metrics["training"]["seconds"] > 0
    history = (trained_run / "history.csv").read_text().splitlines()
    # The fast recipe: 4 frozen epochs (on cached features) + the 1 unfrozen epoch asked for.
    assert history[0] == "phase,epoch,train_loss,valid_loss,accuracy,time_seconds" and len(history) == 6
    assert [row.split(",")[:2] for row in history[1:]] == [["frozen", str(i)] for i in range(4)] + [["unfrozen", "0"]]
    config = json.loads((trained_run / "config.json").read_text())
    assert config["recipe"] == "fast" and config["train"]["cache_features"] is True
    assert config["versions"]["torch"] == torch.__version__
    assert config["model"]["arch"] == "efficientnet_lite0"
    assert config["weight_source"]["kind"] in ("package", "cache", "none")
    classes = (trained_run / "classes.csv").read_text().splitlines()
    assert classes[0] == "class,train,valid,test" and len(classes) == 6
    split = (trained_run / "split.csv").read_text().splitlines()
    assert len(split) == 1 + 61  # 60 faces + good.jpg, the two broken files left out


def test_broken_files_are_reported_not_fatal(trained_run: Path) -> None:
    metrics = json.loads((trained_run / "metrics.json").read_text())
    skipped = {Path(s["path"]).name: s["reason"] for s in metrics["skipped"]}
    assert set(skipped) == {"corrupt.jpg", "notes.jpg"}
    report = (trained_run / "report.html").read_text()
    assert "corrupt.jpg" in report and "notes.jpg" in report
    assert report.count("data:image/png;base64,") >= 5  # plots embedded: readable offline
    assert "<script" not in report and "http" not in report.split("<h2>Settings")[0]


def test_model_file_is_safetensors_with_its_card(trained_run: Path) -> None:
    raw = (trained_run / "model.safetensors").read_bytes()
    header_length = int.from_bytes(raw[:8], "little")
    assert raw[8:9] == b"{" and json.loads(raw[8 : 8 + header_length])  # not a pickle/zip
    with safe_open(str(trained_run / "model.safetensors"), "pt") as handle:
        assert any(k.startswith("head.") for k in handle.keys())  # noqa: SIM118 (safe_open is not iterable)
    card = json.loads((trained_run / "model.json").read_text())
    assert card["arch"] == "efficientnet_lite0"
    assert card["class_names"] == ["angry", "happy", "neutral", "sad", "surprise"]
    assert card["image_size"] == 32 and card["mean"] == [0.5, 0.5, 0.5]
    assert card["metrics"]["test"]["images"] == 20
    assert card["weight_source"]


def test_evaluate_scores_a_folder(trained_run: Path, test_faces: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["evaluate", str(trained_run), str(test_faces), "--format", "json", "--out", str(tmp_path)]) == 0
    metrics = json.loads(capsys.readouterr().out)
    expected = json.loads((trained_run / "metrics.json").read_text())["test"]
    assert metrics["images"] == 20
    assert metrics["accuracy"] == pytest.approx(expected["accuracy"])
    assert (tmp_path / "confusion_matrix.png").is_file()


def test_predict_json_gives_label_and_every_score(
    trained_run: Path, test_faces: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    images = sorted((test_faces / "happy").glob("*.png"))[:2]
    broken = tmp_path / "broken.jpg"
    broken.write_text("not an image")
    code = main(["predict", str(trained_run / "model.safetensors"), *map(str, images), str(broken), "--format", "json"])
    assert code == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["path"] for r in rows] == [*map(str, images), str(broken)]
    for row in rows[:2]:
        assert row["label"] in row["scores"]
        assert set(row["scores"]) == {"angry", "happy", "neutral", "sad", "surprise"}
        assert sum(row["scores"].values()) == pytest.approx(1.0, abs=1e-5)
        assert row["label"] == max(row["scores"], key=row["scores"].get)
    assert rows[2]["label"] is None and "not a readable image" in rows[2]["error"]


def test_predict_folder_as_csv_and_table(trained_run: Path, test_faces: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["predict", str(trained_run), str(test_faces), "--format", "csv"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "path,face,x,y,width,height,detector_score,label,angry,happy,neutral,sad,surprise,blur_sigma,error"
    assert len(lines) == 21
    assert main(["predict", str(trained_run), str(test_faces / "sad")]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 5


def test_same_command_same_metrics(faces: Path, tmp_path: Path) -> None:
    args = ["train", str(faces), "--arch", "mobilenet_v2", "--pretrained", "none", "--freeze-epochs", "0", *TRAIN]
    assert main([*args, "--out", str(tmp_path / "a")]) == 0
    assert main([*args, "--out", str(tmp_path / "b")]) == 0
    first = json.loads((tmp_path / "a" / "metrics.json").read_text())
    second = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert first["valid"]["loss"] == second["valid"]["loss"]
    assert (tmp_path / "a" / "split.csv").read_text() == (tmp_path / "b" / "split.csv").read_text()
    report = (tmp_path / "a" / "report.html").read_text()
    assert "Trained from scratch" in report
    assert json.loads((tmp_path / "a" / "model.json").read_text())["pretrained"] is False


def test_ctrl_c_saves_and_resume_finishes(faces: Path, tmp_path: Path) -> None:
    """A real SIGINT mid-run: the run keeps its best epoch, and --resume completes it."""
    run = tmp_path / "run"
    command = [sys.executable, "-m", "ferlab.cli", "train", str(faces), "--arch", "mobilenet_v2",
               "--pretrained", "none", "--out", str(run), "--patience", "100", *TRAIN, "--epochs", "6"]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith("0 "):  # the first epoch row of the table
            process.send_signal(signal.SIGINT)
            break
    output = line + process.stdout.read()
    assert process.wait(timeout=300) == 0, output
    assert "Continue with: ferlab train --resume" in output
    rows_before = len((run / "history.csv").read_text().splitlines()) - 1
    assert 1 <= rows_before < 10
    assert "Interrupted after" in (run / "report.html").read_text()
    assert main(["train", "--resume", str(run), "--no-progress"]) == 0
    history = (run / "history.csv").read_text().splitlines()[1:]
    assert [row.split(",")[:2] for row in history] == [["frozen", str(i)] for i in range(4)] + [["unfrozen", str(i)] for i in range(6)]
    assert "Interrupted" not in (run / "report.html").read_text()


def test_compare_writes_the_side_by_side_report(faces: Path, tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    code = main(["compare", str(faces), "--arch", "efficientnet_lite0", "mobilenet_v2",
                 "--pretrained", "if-available", "--freeze-epochs", "0", "--out", str(out), *TRAIN])
    assert code == 0
    table = json.loads((out / "compare.json").read_text())
    assert [r["arch"] for r in table["rows"]] == ["efficientnet_lite0", "mobilenet_v2"]
    for row in table["rows"]:
        assert {"parameters", "pretrained", "best_epoch", "accuracy", "macro_f1", "valid_loss",
                "train_minutes", "images_per_second"} <= set(row)
    assert table["observations"]["same_images"] is True
    html = (out / "compare.html").read_text()
    assert "misclassified by every model" in html and "mobilenet_v2/report.html" in html
    for arch in ("efficientnet_lite0", "mobilenet_v2"):
        assert (out / arch / "report.html").is_file()


def test_show_model_and_clear_errors(faces: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", str(faces), "--arch", "resnt34", "--out", str(tmp_path / "x")]) == 2
    assert "did you mean 'resnet34'" in capsys.readouterr().err
    assert main(["train", str(tmp_path / "missing"), "--arch", "resnet18"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", str(faces), "--arch", "mobilenet_v2", "--pretrained", "none", "--show-model",
                 "--freeze-epochs", "0", "--epochs", "1", "--image-size", "32", "--no-progress",
                 "--out", str(tmp_path / "y")]) == 0
    out = capsys.readouterr().out
    assert "ConcatPool2d" in out and "BatchNorm1d(2560" in out and "Linear(in_features=512, out_features=5, bias=False)" in out


def test_archs_lists_every_architecture(capsys: pytest.CaptureFixture[str], empty_caches: Path) -> None:
    assert main(["archs", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    names = {r["arch"] for r in rows}
    assert {"resnet34", "vgg19_bn", "efficientnet_lite0", "convnext_tiny"} <= names
    resnet = next(r for r in rows if r["arch"] == "resnet34")
    assert resnet["weights"] is None and "resnet34-b627a593.pth" in resnet["how_to_get"]


def test_explicit_valid_folder_and_class_subset(faces: Path, test_faces: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    code = main(["train", str(faces), "--valid", str(test_faces), "--classes", "happy,sad,surprise",
                 "--arch", "mobilenet_v2", "--pretrained", "none", "--freeze-epochs", "0",
                 "--out", str(run), *TRAIN])
    assert code == 0
    rows = [line.split(",") for line in (run / "split.csv").read_text().splitlines()[1:]]
    valid = [r for r in rows if r[2] == "valid"]
    assert len(valid) == 12 and all(r[0].startswith(str(test_faces)) for r in valid)
    assert len(rows) - len(valid) == 36  # every training image of the three classes
    card = json.loads((run / "model.json").read_text())
    assert card["class_names"] == ["happy", "sad", "surprise"]


def test_blurred_training_images_against_sharp_test_images_are_flagged(
    faces: Path, test_faces: Path, tmp_path: Path
) -> None:
    from PIL import Image, ImageFilter

    blurred = tmp_path / "blurred"
    for source in faces.rglob("*.png"):
        target = blurred / source.parent.name / source.name
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.open(source).filter(ImageFilter.GaussianBlur(2)).save(target)
    run = tmp_path / "run"
    assert main(["train", str(blurred), "--test", str(test_faces), "--arch", "mobilenet_v2",
                 "--pretrained", "none", "--freeze-epochs", "0", "--out", str(run), *TRAIN]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["data_shift_warnings"]) == 1
    assert "test images differ" in metrics["data_shift_warnings"][0] and "sharper" in metrics["data_shift_warnings"][0]
    assert metrics["image_statistics"]["test"]["sharpness"] > 1.5 * metrics["image_statistics"]["train"]["sharpness"]
    assert "sharper" in (run / "report.html").read_text()
    # The test images were scored as predict scores them (blurred to the training sharpness),
    # and as given; both are reported.
    assert metrics["test"]["sharpness_matched"] > 0 and metrics["test_as_given"]["sharpness_matched"] == 0
    assert metrics["test_as_given"]["images"] == metrics["test"]["images"]
    assert "scored as given" in (run / "report.html").read_text()


def test_demo_generates_data_and_compares_two_architectures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo", "--out", str(tmp_path), "--per-class", "6", "--no-progress"]) == 0
    assert "open the comparison in a browser" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["angry", "happy", "neutral", "sad", "surprise"]
    (compare,) = tmp_path.glob("compare-*/compare.json")
    rows = json.loads(compare.read_text())["rows"]
    assert len(rows) == 2 and rows[0]["arch"] != rows[1]["arch"]
    assert (compare.parent / "compare.html").is_file()
    for row in rows:
        assert (compare.parent / row["arch"] / "report.html").is_file()


def test_demo_picks_the_cheapest_architectures_with_weights() -> None:
    from ferlab.demo import demo_architectures

    assert demo_architectures({"efficientnet_lite2", "mobilenet_v2", "efficientnet_lite0"}) == [
        "efficientnet_lite0", "mobilenet_v2"
    ]
    assert demo_architectures({"efficientnet_lite1"}) == ["efficientnet_lite1", "resnet18"]
    assert demo_architectures(set()) == ["resnet18", "mobilenet_v2"]
