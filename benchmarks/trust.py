"""Trust benchmark: class balance, calibration, test-time augmentation and the label audit.

    python benchmarks/trust.py --quick   # a small subset, a few minutes
    python benchmarks/trust.py           # FER2013, the study's five classes, full size

1. For --balance none, weighted-loss and oversample, `ferlab train TRAIN --classes ... --test
   TEST` with every other default, on one decoded data set and one split: test accuracy,
   macro-F1, per-class recall, the expected calibration error before and after temperature
   scaling (fitted on validation, measured on test), and the accuracy test-time augmentation
   gains on test.
2. `ferlab audit TRAIN --classes ...`, checked against the defects computed here
   independently from the files: pixel-identical groups with conflicting labels and
   near-blank images (grey-level std < 2) at the files' own resolution. Prints how many the
   audit found and the worst rank it gave them.
Prints a table and writes benchmarks/results/trust[-quick]-<date>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ferlab.audit import CONFLICTING, NEAR_BLANK, AuditConfig
from ferlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from ferlab.data import discover
from ferlab.experiment import audit_data, prepare_data, train_run
from ferlab.recipes import apply_recipe, native_size, resolve_recipe
from ferlab.train import pick_device
from ferlab.weights import default_architecture

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "fer2013"
CLASSES = ("angry", "happy", "neutral", "sad", "surprise")
BALANCES = ("none", "weighted-loss", "oversample")


def _subset(source: Path, target: Path, per_class: int) -> Path:
    """Symlinks to `per_class` evenly spaced images of each class (sorted): nothing copied."""
    for name in CLASSES:
        files = sorted((source / name).iterdir())
        step = max(1, len(files) // per_class)
        (target / name).mkdir(parents=True)
        for path in files[::step][:per_class]:
            (target / name / path.name).symlink_to(path.resolve())
    return target


def _balance_row(config: RunConfig, data: Any) -> dict[str, Any]:
    start = time.perf_counter()
    result = train_run(config, data, lambda _: None)
    test = result.metrics["test"]
    calibration = json.loads((result.run_dir / "metrics.json").read_text())["calibration"]
    tta = json.loads((result.run_dir / "metrics.json").read_text())["tta"]
    return {
        "balance": config.train.balance,
        "arch": config.model.arch,
        "minutes": (time.perf_counter() - start) / 60,
        "accuracy": test["accuracy"],
        "macro_f1": test["macro_f1"],
        "recall": {name: block["recall"] for name, block in test["per_class"].items()},
        "temperature": calibration["test"]["temperature"],
        "ece_before": calibration["test"]["ece_before"],
        "ece_after": calibration["test"]["ece_after"],
        "valid_ece_before": calibration["valid"]["ece_before"],
        "valid_ece_after": calibration["valid"]["ece_after"],
        "tta_accuracy": tta["test"]["accuracy_tta"],
        "tta_gain": tta["test"]["gain"],
        "valid_accuracy": result.metrics["valid"]["accuracy"],
        "run_dir": str(result.run_dir),
    }


def known_defects(root: Path) -> dict[str, Any]:
    """Near-blank files and pixel-identical groups with conflicting labels, from the files
    at their own resolution: the ground truth the audit is checked against."""
    files = discover(root, CLASSES)
    groups: dict[str, list[tuple[Path, int]]] = {}
    blank = []
    for path, label in zip(files.paths, files.labels, strict=True):
        pixels = np.asarray(Image.open(path).convert("L"))
        if pixels.std() < 2.0:
            blank.append(path)
        groups.setdefault(hashlib.sha1(pixels.tobytes() + str(pixels.shape).encode()).hexdigest(), []).append((path, label))
    identical = [g for g in groups.values() if len(g) > 1]
    conflicting = [[p for p, _ in g] for g in identical if len({label for _, label in g}) > 1]
    return {"near_blank": blank, "identical_groups": len(identical), "conflicting_groups": conflicting}


def _audit(train_dir: Path, out: Path, image_size: int) -> dict[str, Any]:
    truth = known_defects(train_dir)
    start = time.perf_counter()
    result, table, _ = audit_data(train_dir, CLASSES, default_architecture(), "auto", image_size, out,
                                  AuditConfig(), lambda _: None)
    minutes = (time.perf_counter() - start) / 60
    # A known defect counts as found only when flagged as that kind, not merely flagged.
    rank = {(f.path.resolve(), kind): i for i, f in enumerate(result.findings, start=1) for kind in f.issues}
    blank_ranks = [rank.get((p.resolve(), NEAR_BLANK)) for p in truth["near_blank"]]
    conflict_ranks = [[rank.get((p.resolve(), CONFLICTING)) for p in group] for group in truth["conflicting_groups"]]
    found_groups = sum(all(r is not None for r in ranks) for ranks in conflict_ranks)
    every = [r for r in blank_ranks if r] + [r for ranks in conflict_ranks for r in ranks if r]
    return {
        "images": result.images,
        "minutes": minutes,
        "findings": len(result.findings),
        "counts": result.counts,
        "out_of_sample_accuracy": result.out_of_sample_accuracy,
        "near_blank_known": len(truth["near_blank"]),
        "near_blank_found": sum(r is not None for r in blank_ranks),
        "conflicting_groups_known": len(truth["conflicting_groups"]),
        "conflicting_groups_found": found_groups,
        "identical_groups_known": truth["identical_groups"],
        "duplicate_groups_reported": result.duplicate_groups,
        "worst_rank_of_known_defects": max(every) if every else None,
        "audit_csv": str(table),
    }


def _table(rows: list[dict[str, Any]]) -> str:
    header = ("balance", "accuracy", "macro-F1", *CLASSES, "ECE before", "ECE after", "T", "TTA gain", "min")
    lines = [" ".join(f"{h:>13}" for h in header)]
    for row in rows:
        cells = (row["balance"], f"{row['accuracy']:.4f}", f"{row['macro_f1']:.4f}",
                 *(f"{row['recall'][c]:.3f}" for c in CLASSES), f"{row['ece_before']:.4f}",
                 f"{row['ece_after']:.4f}", f"{row['temperature']:.3f}", f"{row['tta_gain']:+.4f}",
                 f"{row['minutes']:.1f}")
        lines.append(" ".join(f"{c:>13}" for c in cells))
    return "\n".join(lines)


def markdown(result: dict[str, Any], source: str) -> str:
    """The README's table for one results file."""
    lines = [
        f"Measured {result['date']} (`{source}`), {result['arch']}, fast recipe, test folder "
        f"({result['test_images']} images; recall per class):", "",
        "| balance | accuracy | macro-F1 | " + " | ".join(CLASSES) + " | ECE before | ECE after | TTA gain |",
        "|---|---|---|" + "---|" * len(CLASSES) + "---|---|---|",
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['balance']} | {row['accuracy']:.3f} | {row['macro_f1']:.3f} | "
            + " | ".join(f"{row['recall'][c]:.3f}" for c in CLASSES)
            + f" | {row['ece_before']:.3f} | {row['ece_after']:.3f} | {row['tta_gain']:+.3f} |"
        )
    audit = result["audit"]
    lines += ["", (
        f"`ferlab audit` on the training folder ({audit['images']} images, {audit['minutes']:.1f} min): "
        f"{audit['findings']} findings; it found {audit['near_blank_found']} of {audit['near_blank_known']} "
        f"near-blank images and {audit['conflicting_groups_found']} of {audit['conflicting_groups_known']} "
        "pixel-identical groups with conflicting labels (checked against the files themselves), all "
        f"within its first {audit['worst_rank_of_known_defects']} rows."
    )]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="FER2013 image folders (train/, test/)")
    parser.add_argument("--quick", action="store_true", help="a small subset: a few minutes in all")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--markdown", type=Path, metavar="RESULTS_JSON", help="print the README table of a results file")
    args = parser.parse_args(argv)
    if args.markdown is not None:
        print(markdown(json.loads(args.markdown.read_text()), str(args.markdown)))
        return 0
    os.environ["FERLAB_OFFLINE"] = "1"  # measure what is on this machine
    if not (args.data / "train").is_dir():
        print(f"no FER2013 image folders at {args.data} (expected train/ and test/)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="ferlab-trust-"))
    train_dir, test_dir = args.data / "train", args.data / "test"
    if args.quick:
        train_dir = _subset(train_dir, work / "train", 60)
        test_dir = _subset(test_dir, work / "test", 20)
    arch = default_architecture()
    device = pick_device("auto")
    native = native_size(discover(train_dir, CLASSES).paths)
    base = apply_recipe(
        resolve_recipe("fast", device, arch, native),
        RunConfig(data=DataConfig(root=train_dir, classes=CLASSES, test_dir=test_dir), out_dir=work / "none",
                  model=ModelConfig(arch=arch), train=TrainConfig()),
    )
    data = prepare_data(base, lambda _: None)
    rows = []
    for balance in BALANCES:
        print(f"training with --balance {balance} ...", flush=True)
        config = dataclasses.replace(base, out_dir=work / balance,
                                     train=dataclasses.replace(base.train, balance=balance))
        rows.append(_balance_row(config, data))
    print("auditing the training folder ...", flush=True)
    audit = _audit(train_dir, work / "audit", base.data.image_size)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "quick": args.quick, "arch": arch,
        "image_size": base.data.image_size, "train_images": len(data.train), "valid_images": len(data.valid),
        "test_images": len(data.test) if data.test is not None else 0, "rows": rows, "audit": audit,
    }
    print()
    print(_table(rows))
    print()
    print(markdown(result, "this run").split("\n")[-1])
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"trust{'-quick' if args.quick else ''}-{time.strftime('%Y-%m-%d')}.json"
    (args.out / name).write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
