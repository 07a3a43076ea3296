"""Speed benchmark: ferlab's fast recipe against the study's, side by side on one split.

    python benchmarks/speed.py --quick   # a few minutes on a small subset
    python benchmarks/speed.py           # FER2013, the study's five classes, full size

Two measurements, in this one process:
1. Training throughput, per architecture (`--archs`, default the study's ResNet-34 and the
   default architecture): both recipes train 1 frozen + 1 unfrozen epoch on the same seeded
   sample of training images with the same split (`--sample`), which gives each phase's
   images/second exactly (the cost per image does not depend on how many there are), and the
   minutes a full epoch of the training folder would take. At 224 px an epoch of ResNet-34
   takes about an hour on 2 cores, which is why the study recipe is not trained in full.
2. The default run: `ferlab train TRAIN --classes ... --test TEST` with every default (the
   fast recipe, the default architecture), in full: total minutes, test accuracy and
   macro-F1 (as `ferlab predict` scores, and as given: this copy's training images are
   blurred, its test images sharp; see shift.py), peak memory; then prediction speed with
   the engine `ferlab predict` would use.
3. A reference on sharp images: the same defaults trained on test/'s PublicTest files and
   scored on its PrivateTest files, both sharp, to separate what the pipeline can do from
   what the blurred training folder allows.
Prints a table and writes benchmarks/results/speed[-quick]-<date>.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from record import describe_machine

from ferlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from ferlab.data import discover
from ferlab.experiment import prepare_data, train_run
from ferlab.predict import Predictor
from ferlab.recipes import apply_recipe, native_size, resolve_recipe
from ferlab.train import phase_throughput, pick_device
from ferlab.weights import default_architecture

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "fer2013"
CLASSES = ("angry", "happy", "neutral", "sad", "surprise")


def _subset(source: Path, target: Path, per_class: int, prefix: str = "") -> Path:
    """Symlinks to `per_class` evenly spaced images of each class (sorted) whose names start
    with `prefix`: nothing copied."""
    for name in CLASSES:
        files = sorted(p for p in (source / name).iterdir() if p.name.startswith(prefix))
        step = max(1, len(files) // per_class)
        (target / name).mkdir(parents=True)
        for path in files[::step][:per_class]:
            (target / name / path.name).symlink_to(path.resolve())
    return target


def _peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


def _config(recipe_name: str, arch: str, train_dir: Path, test_dir: Path | None, out: Path,
            native: int | None, split_file: Path | None, pretrained: str) -> RunConfig:
    device = pick_device("auto")
    base = RunConfig(
        data=DataConfig(root=train_dir, classes=CLASSES, test_dir=test_dir, split_file=split_file),
        out_dir=out,
        model=ModelConfig(arch=arch, pretrained=pretrained),
        train=TrainConfig(patience=100),  # every planned epoch runs: the same work for both
    )
    return apply_recipe(resolve_recipe(recipe_name, device, arch, native), base)


def _run(config: RunConfig, log: list[str]) -> dict[str, Any]:
    """Train one config end to end; the figures the table needs."""
    start = time.perf_counter()
    data = prepare_data(config, log.append)
    result = train_run(config, data, log.append)
    total = time.perf_counter() - start
    history = result.fit.history
    epochs = len(history)
    test = result.metrics.get("test")
    return {
        "recipe": config.recipe,
        "image_size": config.data.image_size,
        "train_images": len(data.train),
        "epochs": [f"{r.phase} {r.epoch}" for r in history],
        "images_per_second": phase_throughput(history),
        "minutes_per_epoch": sum(r.seconds for r in history) / 60 / max(1, epochs),
        "total_minutes": total / 60,
        "accuracy": test["accuracy"] if test else None,
        "macro_f1": test["macro_f1"] if test else None,
        "accuracy_as_given": result.metrics.get("test_as_given", test or {}).get("accuracy"),
        "sharpness_matched": test["sharpness_matched"] if test else 0,
        "valid_accuracy": result.metrics["valid"]["accuracy"],
        "inference_engine": result.evaluations["valid"].engine,
        "peak_rss_gib": _peak_rss_gib(),
        "run_dir": str(result.run_dir),
    }


def _prediction_speed(run_dir: Path, test_dir: Path, files: int) -> dict[str, Any]:
    predictor = Predictor.load(run_dir)
    paths = sorted(p for name in CLASSES for p in (test_dir / name).iterdir())[:files]
    predictor.predict_files(paths[:64])  # warm-up: allocator, thread pools, ONNX session
    start = time.perf_counter()
    predictor.predict_files(paths, batch_size=128)
    batched = len(paths) / (time.perf_counter() - start)
    latencies = []
    for path in paths[:50]:
        start = time.perf_counter()
        predictor.predict_files([path])
        latencies.append((time.perf_counter() - start) * 1000)
    return {"engine": predictor.engine.name, "files_per_second": batched,
            "single_image_ms_median": statistics.median(latencies), "files": len(paths)}


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _table(rows: list[dict[str, Any]]) -> str:
    header = ("arch", "recipe", "px", "trained on", "img/s frozen", "img/s unfrozen", "min/epoch",
              "total min", "test acc", "as given", "test F1")
    lines = ["  ".join(f"{h:>14}" for h in header)]
    for row in rows:
        rates = row["images_per_second"]
        cells = (row["arch"], row["recipe"], str(row["image_size"]), f"{row['train_images']} img",
                 _fmt(rates.get("frozen"), 1), _fmt(rates.get("unfrozen"), 1),
                 _fmt(row["full_epoch_minutes"], 2), _fmt(row["total_minutes"], 1),
                 _fmt(row["accuracy"]), _fmt(row.get("accuracy_as_given")), _fmt(row["macro_f1"]))
        lines.append("  ".join(f"{c:>14}" for c in cells))
    return "\n".join(lines)


def _full_epoch_minutes(figures: dict[str, Any], train_images: int) -> float:
    """Minutes an unfrozen epoch over `train_images` takes at the measured rate."""
    return train_images / figures["images_per_second"]["unfrozen"] / 60


def markdown(result: dict[str, Any], source: str) -> str:
    """The README's table for one results file."""
    lines = [
        f"Measured {result['date']} on a 2-core CPU machine (no GPU), FER2013 five classes, "
        f"{result['train_files']} training files (`{source}`):", "",
        "| architecture | recipe | px | trained on | img/s frozen | img/s unfrozen | min per epoch "
        "| total min | test accuracy | as given | test macro-F1 |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in result["rows"]:
        rates = row["images_per_second"]
        lines.append(
            f"| {row['arch']} | {row['recipe']} | {row['image_size']} | {row['train_images']} images "
            f"| {_fmt(rates.get('frozen'), 1)} | {_fmt(rates.get('unfrozen'), 1)} "
            f"| {_fmt(row['full_epoch_minutes'], 1)} | {_fmt(row['total_minutes'], 1)} "
            f"| {_fmt(row['accuracy'])} | {_fmt(row.get('accuracy_as_given'))} | {_fmt(row['macro_f1'])} |"
        )
    speedups = "; ".join(f"{arch} {s['unfrozen']:.1f}x unfrozen, {s['frozen']:.1f}x frozen"
                         for arch, s in result["speedup"].items())
    prediction = result["prediction"]
    lines += [
        "",
        "The first row is `ferlab train` with every default, in full. The others train both recipes "
        f"on one {result['sample']}-image sample (same split) for their images/second; minutes per "
        "epoch are for the first row's training images at that rate. Fast over study: "
        f"{speedups}. Prediction ({prediction['arch']}, {prediction['engine']}): "
        f"{prediction['files_per_second']:.0f} face crops per second batched, decoding included; "
        f"{prediction['single_image_ms_median']:.1f} ms for one image after loading. Peak memory of "
        f"the default run: {result['rows'][0]['peak_rss_gib']:.2f} GiB.",
    ]
    first = result["rows"][0]
    if first.get("sharpness_matched"):
        lines += [
            "",
            f"Test accuracy is scored as `ferlab predict` scores: {first['sharpness_matched']} test images "
            "much sharper than this copy's blurred training images were blurred to their sharpness "
            "first (shift.py); 'as given' scores them unchanged.",
        ]
    reference = result.get("reference")
    if reference:
        lines += [
            "",
            f"Reference on sharp images, every default, trained on {reference['train_images']} images "
            f"({reference['data']}): valid accuracy {reference['valid_accuracy']:.3f}, test accuracy "
            f"{reference['accuracy']:.3f}, macro-F1 {reference['macro_f1']:.3f}, "
            f"{reference['total_minutes']:.1f} min.",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="FER2013 image folders (train/, test/)")
    parser.add_argument("--archs", nargs="+", default=["resnet34", "efficientnet_lite2"])
    parser.add_argument("--quick", action="store_true", help="a small subset: a few minutes in all")
    parser.add_argument("--sample", type=int, default=320, help="training images of the side-by-side throughput runs")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    parser.add_argument("--markdown", type=Path, metavar="RESULTS_JSON",
                        help="print the README table of an earlier run and exit")
    args = parser.parse_args(argv)
    if args.markdown is not None:
        print(markdown(json.loads(args.markdown.read_text()), str(args.markdown)))
        return 0
    # Measure what is on this machine: weights that are not here are not fetched mid-benchmark.
    os.environ["FERLAB_OFFLINE"] = "1"
    if not (args.data / "train").is_dir():
        print(f"no FER2013 image folders at {args.data} (expected train/ and test/)", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="ferlab-speed-"))
    train_dir, test_dir = args.data / "train", args.data / "test"
    sample_size = args.sample
    if args.quick:
        train_dir = _subset(train_dir, work / "train", 60)
        test_dir = _subset(test_dir, work / "test", 20)
        sample_size = min(sample_size, 100)
    sample_dir = _subset(args.data / "train", work / "sample", max(2, sample_size // len(CLASSES)))
    files = discover(train_dir, CLASSES).paths
    native = native_size(files)
    rows: list[dict[str, Any]] = []
    log: list[str] = []

    # 1. The default run first, so that its peak memory is its own.
    default_arch = default_architecture()
    config = _config("fast", default_arch, train_dir, test_dir, work / "default", native, None, "auto")
    print(f"default run: {default_arch}, fast recipe, {config.data.image_size} px, in full ...", flush=True)
    default = {"arch": default_arch, **_run(config, log)}
    default["full_epoch_minutes"] = _full_epoch_minutes(default, default["train_images"])
    default["peak_rss_gib"] = _peak_rss_gib()
    prediction = {"arch": default_arch, **_prediction_speed(Path(default["run_dir"]), test_dir, 2000)}
    rows.append(default)

    # 3. The reference on sharp images: PublicTest -> PrivateTest, every default.
    per_class = 40 if args.quick else 10_000
    sharp_train = _subset(args.data / "test", work / "sharp-train", per_class, "PublicTest")
    sharp_test = _subset(args.data / "test", work / "sharp-test", per_class, "PrivateTest")
    config = _config("fast", default_arch, sharp_train, sharp_test, work / "sharp", native, None, "auto")
    print(f"reference: {default_arch} on sharp PublicTest images, scored on PrivateTest ...", flush=True)
    reference = {"arch": default_arch, **_run(config, log), "data": "test/PublicTest -> test/PrivateTest"}
    reference["full_epoch_minutes"] = _full_epoch_minutes(reference, reference["train_images"])

    # 2. Both recipes side by side on one sample, per architecture.
    speedups: dict[str, dict[str, float]] = {}
    for arch in args.archs:
        pair = {}
        split = None
        for recipe in ("fast", "study"):
            # ResNet-34 and VGG19-BN have no ImageNet weights on this machine: they run from
            # random weights, which costs exactly the same time per image.
            config = _config(recipe, arch, sample_dir, None, work / f"{arch}-{recipe}", native, split, "if-available")
            config = dataclasses.replace(config, train=dataclasses.replace(config.train, freeze_epochs=1, epochs=1))
            print(f"{arch}: {recipe} recipe ({config.data.image_size} px) on {sample_size} images ...", flush=True)
            figures = {"arch": arch, **_run(config, log), "total_minutes": None, "accuracy": None, "macro_f1": None}
            figures["full_epoch_minutes"] = _full_epoch_minutes(figures, default["train_images"])
            split = Path(figures["run_dir"]) / "split.csv"  # the study recipe reuses the fast split
            pair[recipe] = figures
            rows.append(figures)
        speedups[arch] = {
            phase: pair["fast"]["images_per_second"][phase] / pair["study"]["images_per_second"][phase]
            for phase in ("frozen", "unfrozen")
        }
    print()
    print(_table(rows))
    print(f"reference on sharp images ({reference['data']}): {reference['train_images']} training images, "
          f"valid accuracy {reference['valid_accuracy']:.4f}, test accuracy {reference['accuracy']:.4f}, "
          f"macro-F1 {reference['macro_f1']:.4f}, {reference['total_minutes']:.1f} min")
    for arch, ratio in speedups.items():
        print(f"{arch}: fast/study training images per second: "
              + ", ".join(f"{phase} {value:.1f}x" for phase, value in ratio.items()))
    print(f"prediction ({prediction['arch']}, {prediction['engine']}): "
          f"{prediction['files_per_second']:.0f} files/s batched (decode included), "
          f"{prediction['single_image_ms_median']:.1f} ms for one image (median)")
    print(f"default run: {default['total_minutes']:.1f} min in all, test accuracy {default['accuracy']:.4f}, "
          f"peak memory {default['peak_rss_gib']:.2f} GiB")
    args.out.mkdir(parents=True, exist_ok=True)
    name = f"speed{'-quick' if args.quick else ''}-{time.strftime('%Y-%m-%d')}.json"
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "machine": describe_machine(),
        "quick": args.quick, "native_size": native,
        "train_files": len(files), "sample": sample_size,
        "rows": rows, "speedup": speedups, "prediction": prediction, "reference": reference,
    }
    (args.out / name).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
