"""Orchestration: data -> model -> fit -> evaluate the best checkpoint -> artefacts.

`prepare_data` decodes and splits once; `train_run` trains one architecture on it and writes
the run folder (compare.py trains several on one split); `audit_data` audits a data set.
Each returns its results as data; messages go through the `echo` callable the caller passes.
"""

from __future__ import annotations

import dataclasses
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file

from ferlab._version import __version__
from ferlab.audit import AuditConfig, AuditResult, run_audit, write_audit_csv
from ferlab.augment import augment_batch
from ferlab.checkpoint import ModelCard, save_model
from ferlab.config import RunConfig, config_to_dict
from ferlab.data import (
    DataError,
    Decoder,
    ImageSet,
    LabelledFiles,
    decode_bytes,
    decode_images,
    discover,
    exclude_files,
    file_digests,
    read_exclusions,
    read_split,
    stratified_split,
    write_split,
)
from ferlab.detect import best_detector, face_crop_decoder, make_detector
from ferlab.engine import select_engine
from ferlab.evaluate import (
    Evaluation,
    Scores,
    overlap_warning,
    score_model,
    summarize,
    top_losses,
)
from ferlab.image_cache import ImageCache
from ferlab.models import FerNet, build_model, count_parameters, get_architecture
from ferlab.predict import TRAINING_HASHES
from ferlab.report import (
    RunReport,
    epoch_table_header,
    format_counts,
    format_epoch_row,
    plot_confusion,
    plot_image_grid,
    plot_loss_curves,
    plot_reliability,
    plot_top_losses,
    write_audit_gallery,
    write_run_report,
)
from ferlab.resume import load_state, save_state
from ferlab.shift import describe_shift, image_statistics
from ferlab.train import EpochRecord, FitResult, fit, phase_throughput, pick_device
from ferlab.weights import WeightSource, resolve_and_load

__all__ = [
    "PreparedData", "RunResult", "TrainingInterrupted", "audit_data", "prepare_data", "train_run", "write_json",
]

Echo = Callable[[str], None]


class TrainingInterrupted(RuntimeError):
    """Ctrl-C came before the first epoch finished, so there is no model to keep."""


@dataclass(frozen=True)
class PreparedData:
    train: ImageSet
    valid: ImageSet
    test: ImageSet | None
    skipped: tuple[dict[str, str], ...]  # every file set aside, with its reason

    def counts(self) -> dict[str, dict[str, int]]:
        counts = {"train": self.train.counts(), "valid": self.valid.counts()}
        if self.test is not None:
            counts["test"] = self.test.counts()
        return counts


@dataclass(frozen=True)
class RunResult:
    run_dir: Path
    arch: str
    parameters: int
    weight_source: WeightSource
    fit: FitResult
    metrics: dict[str, dict[str, Any]]  # "valid" (and "test") -> summarize()
    evaluations: dict[str, Evaluation]
    report: Path


def prepare_data(config: RunConfig, echo: Echo, progress: bool = False) -> PreparedData:
    """Discover, decode and split; errors about the data come before any training."""
    data = config.data
    files = discover(data.root, data.classes)
    if data.exclude_file is not None:
        listed = len(files.paths)
        files = exclude_files(files, read_exclusions(data.exclude_file), data.exclude_file)
        echo(f"left out {listed - len(files.paths)} file(s) marked in {data.exclude_file}")
    echo(f"found {len(files.paths)} image files in {len(files.class_names)} classes under {data.root}")
    cache = ImageCache(data.cache_dir) if data.decode_cache else None
    started = time.perf_counter()
    decoder: Decoder = decode_bytes
    variant = ""
    if data.crop_faces:
        detector = best_detector() if data.face_detector == "auto" else data.face_detector
        decoder = face_crop_decoder(make_detector(detector), data.align_faces)
        variant = f"faces-{detector}" + ("-aligned" if data.align_faces else "")
        echo(f"cropping faces with the {detector} detector" + (", eyes levelled" if data.align_faces else ""))

    def decode(found: LabelledFiles) -> ImageSet:
        return decode_images(found, data.image_size, data.workers, progress, cache=cache, decode=decoder, variant=variant)

    images = decode(files)
    if data.valid_dir is not None:
        valid_files = discover(data.valid_dir, files.class_names)
        valid = decode(valid_files)
        train = images
    else:
        if data.split_file is not None:
            train_index, valid_index = read_split(data.split_file, images)
        else:
            train_index, valid_index = stratified_split(
                images.labels.tolist(), data.valid_fraction, config.train.seed
            )
        train, valid = images.subset(train_index), images.subset(valid_index)
        valid_files = None
    test = None
    if data.test_dir is not None:
        test = decode(discover(data.test_dir, files.class_names))
    skipped = list(images.skipped) + (list(valid.skipped) if valid_files is not None else [])
    skipped += list(test.skipped) if test is not None else []
    seconds = time.perf_counter() - started
    reused = f", {cache.hits} from the decode cache {cache.root}" if cache is not None else ""
    echo(f"decoded {len(train) + len(valid) + (len(test) if test else 0)} images at "
         f"{data.image_size} px in {seconds:.1f} s{reused}")
    if len(train) < 2 or len(valid) < 1:
        raise DataError(f"too few images to train: {len(train)} for training, {len(valid)} for validation")
    return PreparedData(
        train=train,
        valid=valid,
        test=test,
        skipped=tuple({"path": str(s.path), "reason": s.reason} for s in skipped),
    )


def _versions() -> dict[str, str]:
    import timm
    import torchvision

    return {
        "ferlab": __version__,
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "timm": timm.__version__,
        "platform": platform.platform(),
    }


def _hwc(images: torch.Tensor) -> list[np.ndarray]:
    """uint8 or [0,1] float (N, 3, H, W) -> list of uint8 (H, W, 3) for plotting."""
    if images.dtype != torch.uint8:
        images = (images.clamp(0, 1) * 255).round().to(torch.uint8)
    return [image.permute(1, 2, 0).cpu().numpy() for image in images]


def _augmented_samples(config: RunConfig, train: ImageSet, path: Path) -> Path:
    generator = torch.Generator().manual_seed(config.train.seed)
    count = min(12, len(train))
    index = torch.randperm(len(train), generator=generator)[:count]
    augmented = augment_batch(train.images[index], config.augment, generator)
    titles = [train.class_names[int(train.labels[i])] for i in index]
    return plot_image_grid(_hwc(augmented), titles, path, columns=4, title="Augmented training samples")


def _data_shift(data: PreparedData) -> tuple[dict[str, dict[str, float]], list[str]]:
    """Image statistics per split, and a warning for each split that differs from train."""
    statistics = {"train": image_statistics(data.train.images), "valid": image_statistics(data.valid.images)}
    if data.test is not None:
        statistics["test"] = image_statistics(data.test.images)
    notes = [
        note
        for split in statistics
        if split != "train"
        and (note := describe_shift(statistics["train"], statistics[split], split)) is not None
    ]
    return statistics, notes


def write_json(path: Path, value: Any) -> None:
    path.write_text(json.dumps(value, indent=2) + "\n")


def _trust_notes(scores: Scores, data: PreparedData, run_dir: Path) -> tuple[list[str], list[str]]:
    """The report's notes on calibration, the sharpness matching and train/test overlap, and
    the overlap warnings among them; writes the training files' digests beside the model for
    later `ferlab evaluate` runs."""
    notes = []
    for split, summary in scores.calibration.items():
        notes.append(
            f"Calibration ({split}): temperature {scores.temperature:.3f} takes the expected calibration "
            f"error from {summary['ece_before']:.4f} to {summary['ece_after']:.4f}"
            + (" (fitted on these images)." if split == "valid" else " (out of sample).")
        )
    if "test_as_given" in scores.evaluations:
        test, given = scores.evaluations["test"], scores.evaluations["test_as_given"]
        notes.append(
            f"{test.sharpness_matched} of {len(test.labels)} test images are much sharper than the training "
            "images and were blurred to their sharpness before scoring, as `ferlab predict` does: accuracy "
            f"{test.accuracy:.4f}; scored as given {given.accuracy:.4f}."
        )
    digests = set(file_digests(data.train.paths + data.valid.paths)) - {""}
    (run_dir / TRAINING_HASHES).write_text("".join(f"{d}\n" for d in sorted(digests)))
    overlap = overlap_warning(digests, file_digests(data.test.paths), "test") if data.test is not None else None
    warnings = [overlap] if overlap else []
    return warnings + notes, warnings


def _card(
    config: RunConfig, model_classes: Sequence[str], source: WeightSource, metrics: dict[str, Any],
    train_sharpness: float,
) -> ModelCard:
    arch = get_architecture(config.model.arch)
    return ModelCard(
        arch=arch.name,
        class_names=tuple(model_classes),
        image_size=config.data.image_size,
        mean=arch.mean,
        std=arch.std,
        head_hidden=config.model.head_hidden,
        head_dropout=config.model.head_dropout,
        weight_source=source.describe(),
        pretrained=source.kind != "none",
        match_sharpness=train_sharpness,
        align_faces=config.data.crop_faces and config.data.align_faces,
        metrics=metrics,
    )


def train_run(
    config: RunConfig,
    data: PreparedData,
    echo: Echo = print,
    progress: bool = False,
    resume: bool = False,
    show_model: bool = False,
) -> RunResult:
    """Train `config.model.arch` on `data`, evaluate the best checkpoint, write the run folder."""
    run_dir = config.out_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    arch = get_architecture(config.model.arch)
    class_names = data.train.class_names
    device = pick_device(config.train.device)
    torch.manual_seed(config.train.seed)

    previous: dict[str, Any] = json.loads((run_dir / "config.json").read_text()) if resume else {}
    if resume:
        source = WeightSource(**previous["weight_source"])
        model = build_model(arch.name, len(class_names), config.model.head_hidden, config.model.head_dropout)
        state, optimizer_state, generator_state = load_state(run_dir, model)
        echo(f"resuming {run_dir} after {len(state.history)} finished epoch(s)")
    else:
        holder: dict[str, WeightSource] = {}

        def load_imagenet(a: Any, network: torch.nn.Module) -> None:
            holder["source"] = resolve_and_load(a, network, config.model.pretrained)

        model = build_model(
            arch.name, len(class_names), config.model.head_hidden, config.model.head_dropout, load_imagenet
        )
        source = holder["source"]
        state, optimizer_state, generator_state = None, None, None
    echo(f"{arch.name}: {count_parameters(model) / 1e6:.1f} M parameters; weights: {source.describe()}")
    if show_model:
        echo(str(model))

    counts = data.counts()
    write_json(
        run_dir / "config.json",
        {**config_to_dict(config), "weight_source": dataclasses.asdict(source), "versions": _versions()},
    )
    with open(run_dir / "classes.csv", "w") as handle:
        handle.write("class," + ",".join(counts) + "\n")
        for name in class_names:
            handle.write(name + "," + ",".join(str(counts[s].get(name, 0)) for s in counts) + "\n")
    write_split(run_dir / "split.csv", data.train, data.valid)
    echo(format_counts(counts))
    if data.skipped:
        echo(f"skipped {len(data.skipped)} file(s); they are listed in metrics.json and the report")
    figures = [_augmented_samples(config, data.train, run_dir / "augmented_samples.png")]
    statistics, shift_notes = _data_shift(data)
    train_sharpness = statistics["train"]["sharpness"]
    for note in shift_notes:
        echo(f"warning: {note}")

    model_path = run_dir / "model.safetensors"
    last_phase = [state.history[-1].phase if state and state.history else ""]

    def on_epoch(record: EpochRecord) -> None:
        if record.phase != last_phase[0]:
            echo(f"{'frozen body: training the head' if record.phase == 'frozen' else 'unfrozen: training every layer'}")
            echo(epoch_table_header())
            last_phase[0] = record.phase
        echo(format_epoch_row(record))

    def on_improve(improved: FerNet, record: EpochRecord) -> None:
        save_model(improved, _card(config, class_names, source, {}, train_sharpness), model_path)

    def on_state(current: FerNet, optimizer: Any, train_state: Any, generator: torch.Generator) -> None:
        save_state(run_dir, current, optimizer, train_state, generator)

    fitted = fit(
        model, data.train, data.valid, config.train, config.augment,
        mean=arch.mean, std=arch.std, batch_size=config.data.batch_size, device=device,
        on_epoch=on_epoch, on_improve=on_improve, on_state=on_state, state=state,
        optimizer_state=optimizer_state, generator_state=generator_state, progress=progress,
    )
    if not model_path.is_file():
        raise TrainingInterrupted("stopped before the first epoch finished; nothing was saved")
    notes: list[str] = list(shift_notes)
    if fitted.interrupted:
        notes.append(
            f"Interrupted after {len(fitted.history)} epoch(s); results are for the best finished "
            f"epoch. Continue with: ferlab train --resume {run_dir}"
        )
        echo(notes[-1])
    model.load_state_dict(load_file(str(model_path)))  # the best checkpoint, not the last epoch

    choice = select_engine(model, config.data.image_size, model_path, device, config.train.inference_engine)
    echo(f"inference engine: {choice.reason}")
    # Calibrated on the validation split; test scored as `ferlab predict` scores (images much
    # sharper than the training images blurred to their sharpness first) and, if that touched
    # any, as given too; test-time augmentation's gain measured on both.
    scores = score_model(choice.engine, data.valid, data.test, arch.mean, arch.std, train_sharpness)
    evaluations = scores.evaluations
    metrics = {split: summarize(e) for split, e in evaluations.items()}
    trust_notes, overlap_warnings = _trust_notes(scores, data, run_dir)
    for note in trust_notes:
        echo(note)
    notes += trust_notes
    best = fitted.history[fitted.best_index]
    training = {
        "seconds": fitted.train_seconds,
        "minutes_per_epoch": fitted.train_seconds / 60 / max(1, len(fitted.history)),
        "images_per_second": fitted.images_per_second,
        "images_per_second_by_phase": phase_throughput(fitted.history),
        "epochs_run": len(fitted.history),
        "best_epoch": {"phase": best.phase, "epoch": best.epoch},
        "stopped_early": fitted.stopped_early,
        "interrupted": fitted.interrupted,
        "device": str(device),
    }
    inference = {
        "engine": choice.engine.name,
        "reason": choice.reason,
        "parity": dataclasses.asdict(choice.parity) if choice.parity is not None else None,
    }
    all_metrics = {
        "arch": arch.name,
        "pretrained": source.kind != "none",
        "weight_source": source.describe(),
        **metrics,
        "training": training,
        "inference": inference,
        "calibration": scores.calibration,
        "tta": scores.tta,
        "image_statistics": statistics,
        "data_shift_warnings": shift_notes,
        "overlap_warnings": overlap_warnings,
        "skipped": list(data.skipped),
    }
    write_json(run_dir / "metrics.json", all_metrics)
    compact = {s: {k: m[k] for k in ("accuracy", "macro_f1", "loss", "images")} for s, m in metrics.items()}
    compact["train_image_statistics"] = statistics["train"]
    card = dataclasses.replace(_card(config, class_names, source, compact, train_sharpness), temperature=scores.temperature)
    save_model(model, card, model_path)
    with open(run_dir / "history.csv", "w") as handle:
        handle.write("phase,epoch,train_loss,valid_loss,accuracy,time_seconds\n")
        for r in fitted.history:
            handle.write(f"{r.phase},{r.epoch},{r.train_loss:.6f},{r.valid_loss:.6f},{r.accuracy:.6f},{r.seconds:.2f}\n")

    valid_eval = evaluations["valid"]
    worst = top_losses(valid_eval, config.train.top_losses)
    figures = [
        plot_loss_curves(fitted.step_losses, fitted.history, run_dir / "loss_curves.png"),
        plot_confusion(metrics["valid"]["confusion_matrix"], class_names, run_dir / "confusion_matrix.png"),
        plot_top_losses(worst, _hwc(data.valid.images[[t.index for t in worst]]), run_dir / "top_losses.png"),
        plot_reliability(scores.calibration, run_dir / "reliability_diagram.png"),
        *figures,
    ]
    if "test" in metrics:
        figures.insert(2, plot_confusion(metrics["test"]["confusion_matrix"], class_names, run_dir / "confusion_matrix_test.png"))
    report = write_run_report(
        RunReport(
            title=f"ferlab run: {arch.name}",
            arch=arch.name,
            weight_source=source.describe(),
            pretrained=source.kind != "none",
            counts=counts,
            history=fitted.history,
            best_index=fitted.best_index,
            metrics=metrics,
            skipped=data.skipped,
            figures=figures,
            notes=notes,
            settings=config_to_dict(config),
            calibration=scores.calibration,
            tta=scores.tta,
        ),
        run_dir / "report.html",
    )
    for split, m in metrics.items():
        echo(f"{split}: accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}, loss {m['loss']:.4f}")
    echo(f"report: {report}")
    return RunResult(
        run_dir=run_dir, arch=arch.name, parameters=count_parameters(model), weight_source=source,
        fit=fitted, metrics=metrics, evaluations=evaluations, report=report,
    )


def audit_data(
    root: Path, classes: Sequence[str] | None, arch_name: str, pretrained: str, image_size: int,
    out_dir: Path, config: AuditConfig, echo: Echo = print, exclude_file: Path | None = None,
    gallery_size: int = 300,
) -> tuple[AuditResult, Path, Path]:
    """Audit a folder-per-class data set (audit.py); writes out_dir/audit.csv and audit.html."""
    arch = get_architecture(arch_name)
    files = discover(root, classes)
    if exclude_file is not None:
        files = exclude_files(files, read_exclusions(exclude_file), exclude_file)
    images = decode_images(files, image_size, cache=ImageCache())
    echo(f"auditing {len(images)} images of {len(images.class_names)} classes under {root} at {image_size} px")
    holder: dict[str, WeightSource] = {}

    def load_imagenet(a: Any, network: torch.nn.Module) -> None:
        holder["source"] = resolve_and_load(a, network, pretrained)

    torch.manual_seed(config.seed)  # random weights (--pretrained none) and the head: reproducible
    model = build_model(arch.name, len(images.class_names), load_imagenet=load_imagenet)
    echo(f"features: {arch.name} body, weights: {holder['source'].describe()}")
    device = pick_device("auto")
    model.to(device)
    result = run_audit(model, images, arch.mean, arch.std, device, config)
    out_dir.mkdir(parents=True, exist_ok=True)
    table = write_audit_csv(result, out_dir / "audit.csv")
    shown = result.findings[:gallery_size]
    gallery = write_audit_gallery(
        result, _hwc(images.images[[f.index for f in shown]]) if shown else [], out_dir / "audit.html", str(root)
    )
    return result, table, gallery
