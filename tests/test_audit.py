"""The label audit on data with planted defects: label errors, duplicates, a near-blank image."""

from __future__ import annotations

import csv
import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ferlab.audit import confident_learning, duplicate_groups, near_blank, near_duplicate_groups
from ferlab.cli import main

COLOURS = {"blue": (40, 60, 200), "green": (40, 190, 60), "red": (210, 50, 40)}


def _image(colour: tuple[int, int, int], rng: np.random.Generator, size: int = 32) -> Image.Image:
    """A colour field with its own random texture, so no two are near duplicates."""
    noise = rng.normal(0, 28, (size, size, 1))
    pixels = np.clip(np.array(colour)[None, None, :] + noise + rng.normal(0, 10, (1, 1, 3)), 0, 255)
    return Image.fromarray(pixels.astype(np.uint8))


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, set[str]]]:
    """3 colour classes x 24 images, with label errors, duplicates and a near-blank image."""
    root = tmp_path_factory.mktemp("audit") / "data"
    rng = np.random.default_rng(0)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(24):
            _image(colour, rng).save(root / name / f"{name}-{i:02d}.png")
    planted: dict[str, set[str]] = {"label": set(), "conflicting": set(), "blank": set()}
    # One label error in each of three cells (as random label noise falls), so that no held-out
    # error is backed by others of its kind in the folds it is scored by.
    for i, (colour, folder) in enumerate((("red", "green"), ("green", "blue"), ("blue", "red"))):
        _image(COLOURS[colour], rng).save(root / folder / f"wrong-{i}.png")
        planted["label"].add(f"wrong-{i}.png")
    shutil.copy(root / "blue" / "blue-05.png", root / "red" / "copy-of-blue-05.png")  # one image, two labels
    planted["conflicting"] = {"blue-05.png", "copy-of-blue-05.png"}
    shutil.copy(root / "red" / "red-07.png", root / "red" / "copy-of-red-07.png")  # same label twice
    flat = np.full((32, 32, 3), 120, dtype=np.uint8) + rng.integers(0, 2, (32, 32, 1), dtype=np.uint8)
    Image.fromarray(flat).save(root / "blue" / "blank.png")
    planted["blank"] = {"blank.png"}
    return root, planted


def test_audit_ranks_the_planted_defects_first(planted: tuple[Path, dict[str, set[str]]], tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    root, truth = planted
    out = tmp_path / "audit"
    assert main(["audit", str(root), "--arch", "resnet18", "--pretrained", "none", "--image-size", "32",
                 "--out", str(out)]) == 0
    output = capsys.readouterr().out
    assert "flagged" in output and "caution" not in output  # colours are easy: a strong classifier
    rows = list(csv.DictReader((out / "audit.csv").open()))
    names = [Path(r["path"]).name for r in rows]
    # Objective defects first: the near-blank image, then the group filed under two labels.
    assert names[0] == "blank.png" and rows[0]["issues"].startswith("near-blank") and rows[0]["exclude"] == "yes"
    assert set(names[1:3]) == truth["conflicting"]
    assert all(r["issues"].startswith("conflicting-duplicates") and r["exclude"] == "yes" for r in rows[1:3])
    assert {rows[1]["group"], rows[2]["group"]} == {rows[1]["group"]}
    # The planted label errors lead the suspected label errors, with their true colour suggested.
    # (Within the first four: across seeds of the random body, a clean image came third once.)
    label_rows = [r for r in rows if r["issues"].split(";")[0] == "label"]
    suggested = {Path(r["path"]).name: r["suggested_label"] for r in label_rows[:4]}
    assert truth["label"] <= set(suggested)
    assert {name: suggested[name] for name in truth["label"]} == {
        "wrong-0.png": "red", "wrong-1.png": "green", "wrong-2.png": "blue"
    }
    assert all(r["exclude"] == "" for r in label_rows)
    assert len(label_rows) <= 3 + 5  # few clean images among 75 are suspected
    # Of two copies under one label, the first in file order is kept and the other flagged.
    duplicates = [Path(r["path"]).name for r in rows if "duplicate" in r["issues"].split(";")]
    assert duplicates == ["red-07.png"]
    gallery = (out / "audit.html").read_text()
    assert gallery.count("<div class='card") == len(rows) and "wrong-0.png" in gallery

    # Train with the audit's pre-marked exclusions: those files are left out and listed.
    run = tmp_path / "run"
    assert main(["train", str(root), "--exclude", str(out / "audit.csv"), "--arch", "resnet18",
                 "--pretrained", "none", "--image-size", "32", "--epochs", "1", "--freeze-epochs", "1",
                 "--out", str(run), "--no-progress"]) == 0
    skipped = {Path(s["path"]).name: s["reason"] for s in json.loads((run / "metrics.json").read_text())["skipped"]}
    assert skipped == {name: "excluded by audit.csv" for name in truth["blank"] | truth["conflicting"]}
    trained = {Path(line.split(",")[0]).name for line in (run / "split.csv").read_text().splitlines()[1:]}
    assert not trained & (truth["blank"] | truth["conflicting"]) and "wrong-0.png" in trained


def test_exclusion_list_without_marks_and_bad_lists(planted: tuple[Path, dict[str, set[str]]], tmp_path: Path) -> None:
    from ferlab.data import DataError, discover, exclude_files, read_exclusions

    root, _ = planted
    listing = tmp_path / "drop.csv"
    listing.write_text(f"path\n{root / 'green' / 'wrong-0.png'}\n")
    files = exclude_files(discover(root), read_exclusions(listing), listing)
    assert "wrong-0.png" not in {p.name for p in files.paths}
    assert [(s.path.name, s.reason) for s in files.skipped] == [("wrong-0.png", "excluded by drop.csv")]
    (tmp_path / "bad.csv").write_text("file\nx.png\n")
    with pytest.raises(DataError, match="'path' column"):
        read_exclusions(tmp_path / "bad.csv")
    with pytest.raises(DataError, match="ferlab audit"):
        read_exclusions(tmp_path / "missing.csv")


def test_a_weak_auditing_classifier_is_called_weak() -> None:
    from ferlab.audit import AuditResult

    weak = AuditResult((), 100, ("a", "b"), {}, 0, 0, out_of_sample_accuracy=0.62, majority_rate=0.6)
    assert weak.caution is not None and "weak evidence" in weak.caution
    assert dataclasses.replace(weak, out_of_sample_accuracy=0.9).caution is None


def test_building_blocks() -> None:
    # Confident learning: a confident other class flags the image; an unsure one does not.
    # Thresholds: class 0 (0.9 + 0.8) / 2 = 0.85, class 1 (0.7 + 0.9 + 0.12 + 0.4) / 4 = 0.53.
    probabilities = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.1, 0.9], [0.88, 0.12], [0.6, 0.4]])
    labels = np.array([0, 0, 1, 1, 1, 1])
    assert confident_learning(probabilities, labels).tolist() == [False, False, False, False, True, False]
    images = torch.randint(0, 256, (5, 3, 16, 16), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    images[3] = images[1]
    images[4] = 100
    assert duplicate_groups(images) == [[1, 3]]
    assert near_blank(images, 2.0).tolist() == [False, False, False, False, True]
    shifted = images.clone()
    shifted[2] = (images[0].int() + 3).clamp(0, 255).to(torch.uint8)  # a brightness change only
    assert [0, 2] in near_duplicate_groups(shifted, 0.995)
