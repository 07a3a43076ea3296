"""The `ferlab` command: argument parsing and printing only; the work is in the modules."""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["main"]

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _echo(message: str) -> None:
    print(message, flush=True)


def _timestamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--classes", help="comma-separated class folders to use, e.g. angry,happy,neutral,sad,surprise")
    group.add_argument("--valid-fraction", type=float, default=0.2, help="share held out for validation (default 0.2)")
    group.add_argument("--valid", type=Path, help="an explicit validation folder instead of a random split")
    group.add_argument("--test", type=Path, help="a test folder, evaluated once at the end with the best checkpoint")
    group.add_argument("--split-file", type=Path, help="reuse the split.csv of an earlier run")
    group.add_argument("--image-size", type=int,
                       help="input size in pixels (fast recipe: the images' own size, 64-112 px on a CPU, 224 on a GPU; study: 224)")
    group.add_argument("--batch-size", type=int, help="default 64, the study's")
    group.add_argument("--workers", type=int, default=0, help="image decoding threads (0 = one per core)")
    group.add_argument("--crop-faces", action="store_true",
                       help="crop the largest face out of every photo larger than a face crop first (cached); "
                       "photos with no face found are skipped and listed")
    group.add_argument("--face-detector", default="auto", metavar="auto|haar|mtcnn",
                       help="for --crop-faces: auto (default) = mtcnn where its weights are installed, else haar")
    group.add_argument("--align-faces", action="store_true",
                       help="for --crop-faces: turn each face so its eyes are level (mtcnn gives eye positions)")
    group.add_argument("--exclude", type=Path, metavar="AUDIT_CSV",
                       help="leave out the files marked exclude=yes in an audit.csv (from `ferlab audit`), "
                       "or every file of a list with a 'path' column; they are listed in the report")
    aug = parser.add_argument_group("augmentation (the study's fastai aug_transforms)")
    aug.add_argument("--no-augment", action="store_true", help="turn every augmentation off")
    aug.add_argument("--no-flip", action="store_true", help="no horizontal flips")
    aug.add_argument("--flip-vertical", action=argparse.BooleanOptionalAction,
                     help="also flip vertically (the study did; on in --recipe study)")
    aug.add_argument("--max-rotate", type=float, default=10.0, help="degrees (default 10)")
    aug.add_argument("--max-zoom", type=float, default=1.1, help="default 1.1")
    aug.add_argument("--max-warp", type=float, default=0.2, help="perspective warp (default 0.2)")
    aug.add_argument("--max-lighting", type=float, default=0.2, help="brightness/contrast (default 0.2)")


def _add_training_options(parser: argparse.ArgumentParser, several_balances: bool = False) -> None:
    from ferlab.config import BALANCES, LOSSES

    group = parser.add_argument_group("training")
    group.add_argument("--recipe", choices=("fast", "study"), default="fast",
                       help="fast (default): ferlab's CPU-aware settings; study: the study's literally (224 px, 1+3 epochs, batch 64)")
    group.add_argument("--pretrained", default="auto",
                       help="auto (must find ImageNet weights), if-available, none (from scratch), or PATH to a state dict")
    group.add_argument("--freeze-epochs", type=int, help="epochs with the body frozen (fast: 4 on cached features; study: 1)")
    group.add_argument("--epochs", type=int, help="unfrozen epochs (default 3, the study's)")
    group.add_argument("--lr", type=float, help="peak learning rate of the head (default 2e-3)")
    group.add_argument("--patience", type=int, default=3, help="early stopping patience in epochs (default 3)")
    group.add_argument("--balance", choices=BALANCES, nargs="+" if several_balances else None,
                       default=["none"] if several_balances else "none",
                       help="class imbalance: none (the study's), weighted-loss, oversample or undersample"
                       + ("; several are compared on the same split" if several_balances else ""))
    group.add_argument("--loss", choices=LOSSES, default="cross-entropy", help="cross-entropy or focal")
    group.add_argument("--train-bn", action=argparse.BooleanOptionalAction,
                       help="let the frozen body's BatchNorm layers train, as fastai does (study: on; fast: off, see config.py)")
    group.add_argument("--keep-bn-statistics", action=argparse.BooleanOptionalAction,
                       help="the body's BatchNorm layers keep their ImageNet statistics once unfrozen "
                       "(fast: on; study: off, fastai's way)")
    group.add_argument("--channels-last", action=argparse.BooleanOptionalAction,
                       help="channels_last memory format (fast: on for a CPU except VGG)")
    group.add_argument("--cache-features", action=argparse.BooleanOptionalAction,
                       help="frozen phase on cached body features (fast: on)")
    group.add_argument("--decode-cache", action=argparse.BooleanOptionalAction,
                       help="keep decoded images on disk, keyed by content (fast: on; folder: $FERLAB_CACHE or ~/.cache/ferlab)")
    group.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    group.add_argument("--seed", type=int, default=42)
    group.add_argument("--out", type=Path, help="run folder (default runs/<timestamp>-<arch>)")
    group.add_argument("--no-progress", action="store_true", help="no progress bars")


def _add_engine_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--engine", choices=("auto", "onnx", "torch"), default="auto",
        help="inference engine: auto = ONNX Runtime when installed and matching PyTorch, else PyTorch",
    )
    parser.add_argument(
        "--no-match-sharpness", dest="match_sharpness", action="store_false",
        help="score images as they are, even when much sharper than the training images "
        "(by default those are blurred to the training sharpness first)",
    )
    parser.add_argument("--tta", action="store_true",
                        help="test-time augmentation: average over the image, its mirror image and four corner crops "
                        "(6x the work; its measured gain is in each run's report)")


def _add_labelling_options(parser: argparse.ArgumentParser) -> None:
    """predict's and serve's: which faces to label, and how."""
    parser.add_argument("--faces", default="auto", metavar="auto|none|DETECTOR",
                        help="auto (default): find the faces in images larger than a face crop, with mtcnn where its "
                        "weights are installed, else haar; none: each image is one face, as in training; haar or "
                        "mtcnn: detect in every image with that detector")
    parser.add_argument("--align-faces", action="store_true",
                        help="turn each face so its eyes are level before scoring (mtcnn gives eye positions)")
    parser.add_argument("--min-confidence", type=float, default=0.0, metavar="P",
                        help="label 'uncertain' where the calibrated top score is below P (scores are still given)")


def _load_predictor(args: argparse.Namespace) -> Any:
    from ferlab.predict import Predictor

    return Predictor.load(args.model, args.device, args.engine, args.match_sharpness, args.tta, args.min_confidence,
                          args.faces, args.align_faces)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ferlab", description="Facial expression recognition by transfer learning."
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    train = commands.add_parser("train", help="train one architecture on a folder-per-class data set")
    train.add_argument("data", type=Path, nargs="?", help="folder with one sub-folder per class")
    train.add_argument("--arch", default="auto", help="architecture (see `ferlab archs`); auto = best with weights here")
    train.add_argument("--show-model", action="store_true", help="print the module tree")
    train.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue an interrupted run")
    _add_data_options(train)
    _add_training_options(train)

    compare = commands.add_parser("compare", help="train several architectures on the same split")
    compare.add_argument("data", type=Path)
    compare.add_argument("--arch", nargs="+", default=["resnet34", "vgg19_bn"], help="default: the study's two")
    _add_data_options(compare)
    _add_training_options(compare, several_balances=True)

    evaluate = commands.add_parser("evaluate", help="score a saved model on a labelled folder")
    evaluate.add_argument("model", type=Path, help="run folder or model.safetensors")
    evaluate.add_argument("data", type=Path, help="folder with one sub-folder per class")
    evaluate.add_argument("--format", choices=("table", "json"), default="table")
    evaluate.add_argument("--out", type=Path, help="also write metrics.json and confusion_matrix.png here")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--batch-size", type=int, default=128)
    _add_engine_option(evaluate)

    predict = commands.add_parser("predict", help="label face images with per-class probabilities")
    predict.add_argument("model", type=Path, help="run folder or model.safetensors")
    predict.add_argument("inputs", type=Path, nargs="+", help="image files, folders, or videos (.mp4 .avi .mov ...)")
    predict.add_argument("--format", choices=("table", "json", "csv"), default="table")
    predict.add_argument("--device", default="auto")
    predict.add_argument("--batch-size", type=int, default=64)
    _add_labelling_options(predict)
    predict.add_argument("--annotate", type=Path, metavar="OUT_DIR",
                         help="write copies of the images with each face's box and label drawn")
    predict.add_argument("--every", type=int, default=5, metavar="N", help="videos: label every N-th frame (default 5)")
    predict.add_argument("--out", type=Path, help="videos: folder for frames.csv, expression.png and, with --annotate, "
                         "annotated.mp4 (default runs/<timestamp>-video)")
    _add_engine_option(predict)

    serve = commands.add_parser("serve", help="web page and JSON API that label the faces of uploaded photos")
    serve.add_argument("model", type=Path, help="run folder or model.safetensors")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    serve.add_argument("--port", type=int, default=8000, help="default 8000")
    serve.add_argument("--device", default="auto")
    _add_labelling_options(serve)
    serve.add_argument("--max-upload-mb", type=float, default=20.0, help="largest upload accepted (default 20 MB)")
    serve.add_argument("--max-megapixels", type=float, default=50.0,
                       help="largest image accepted, read from its header before decoding (default 50)")
    _add_engine_option(serve)

    audit = commands.add_parser("audit", help="find likely label errors, duplicates and near-blank images")
    audit.add_argument("data", type=Path, help="folder with one sub-folder per class")
    audit.add_argument("--classes", help="comma-separated class folders to audit (default: all)")
    audit.add_argument("--arch", default="auto", help="body whose ImageNet features score the images (default: best here)")
    audit.add_argument("--pretrained", default="auto", help="auto, if-available, or PATH to a state dict")
    audit.add_argument("--image-size", type=int, help="default: the images' own size, 64-112 px on a CPU")
    audit.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    audit.add_argument("--exclude", type=Path, metavar="AUDIT_CSV", help="leave out files an earlier audit marked")
    audit.add_argument("--gallery", type=int, default=300, help="findings shown in audit.html (default 300)")
    audit.add_argument("--out", type=Path, help="folder for audit.csv and audit.html (default runs/<timestamp>-audit)")

    export = commands.add_parser("export", help="write a model as ONNX, checked against PyTorch")
    export.add_argument("model", type=Path, help="run folder or model.safetensors")
    export.add_argument("--onnx", action="store_true", required=True, help="export to ONNX (the one format so far)")
    export.add_argument("--out", type=Path, help="where to write it (default: model.onnx beside the weights)")

    archs = commands.add_parser("archs", help="list architectures and where their weights are")
    archs.add_argument("--format", choices=("table", "json"), default="table")

    demo = commands.add_parser("demo", help="compare two architectures on a generated data set (a few minutes)")
    demo.add_argument("--out", type=Path, default=Path("ferlab-demo"), help="default ./ferlab-demo")
    demo.add_argument("--per-class", type=int, default=100, help="images per expression (default 100)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def _classes(args: argparse.Namespace) -> tuple[str, ...] | None:
    return tuple(c.strip() for c in args.classes.split(",") if c.strip()) if args.classes else None


def _native_size(args: argparse.Namespace) -> int | None:
    """The data's own resolution, which the fast recipe sizes its inputs by."""
    from ferlab.data import discover
    from ferlab.recipes import native_size

    if args.recipe != "fast" or args.image_size is not None:
        return None
    return native_size(discover(args.data, _classes(args)).paths)


def _run_config(
    args: argparse.Namespace, arch: str, out_dir: Path, native: int | None, balance: str | None = None
) -> Any:
    """The run's settings: the recipe's, with every option given on the command line on top."""
    from ferlab.config import AugmentConfig, DataConfig, ModelConfig, RunConfig, TrainConfig
    from ferlab.recipes import apply_recipe, override, resolve_recipe
    from ferlab.train import pick_device

    balance = balance or args.balance
    recipe = override(
        resolve_recipe(args.recipe, pick_device(args.device), arch, native),
        image_size=args.image_size, batch_size=args.batch_size, freeze_epochs=args.freeze_epochs,
        epochs=args.epochs, lr=args.lr, channels_last=args.channels_last,
        cache_features=args.cache_features, train_bn=args.train_bn,
        keep_bn_statistics=args.keep_bn_statistics,
        flip_vertical=args.flip_vertical, decode_cache=args.decode_cache,
    )
    base = RunConfig(
        data=DataConfig(
            root=args.data, classes=_classes(args), valid_fraction=args.valid_fraction,
            valid_dir=args.valid, test_dir=args.test, split_file=args.split_file, workers=args.workers,
            exclude_file=args.exclude, crop_faces=args.crop_faces, face_detector=args.face_detector,
            align_faces=args.align_faces,
        ),
        out_dir=out_dir,
        model=ModelConfig(arch=arch, pretrained=args.pretrained),
        train=TrainConfig(patience=args.patience, device=args.device, seed=args.seed, balance=balance,
                          loss=args.loss),
        augment=AugmentConfig(
            enabled=not args.no_augment,
            flip_horizontal=not args.no_flip,
            max_rotate=args.max_rotate,
            max_zoom=args.max_zoom,
            max_warp=args.max_warp,
            max_lighting=args.max_lighting,
        ),
    )
    return apply_recipe(recipe, base)


def _cmd_train(args: argparse.Namespace) -> int:
    from ferlab.config import config_from_dict
    from ferlab.experiment import prepare_data, train_run
    from ferlab.weights import default_architecture

    progress = not args.no_progress
    if args.resume is not None:
        config_file = args.resume / "config.json"
        if not (args.resume / "resume.json").is_file() or not config_file.is_file():
            raise FileNotFoundError(f"{str(args.resume)!r} is not an interrupted ferlab run (no resume.json/config.json)")
        config = config_from_dict(json.loads(config_file.read_text()))
        config = dataclasses.replace(
            config, out_dir=args.resume,
            data=dataclasses.replace(config.data, split_file=None if config.data.valid_dir else args.resume / "split.csv"),
        )
        data = prepare_data(config, _echo, progress)
        train_run(config, data, _echo, progress, resume=True, show_model=args.show_model)
        return 0
    if args.data is None:
        raise ValueError("give the data folder: ferlab train DATA (or --resume RUN_DIR)")
    arch = default_architecture() if args.arch == "auto" else args.arch
    from ferlab.models import get_architecture

    get_architecture(arch)
    config = _run_config(args, arch, args.out or Path("runs") / f"{_timestamp()}-{arch}", _native_size(args))
    _echo(f"run folder: {config.out_dir} (recipe {config.recipe}, {config.data.image_size} px)")
    data = prepare_data(config, _echo, progress)
    train_run(config, data, _echo, progress, show_model=args.show_model)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from ferlab.compare import compare_runs
    from ferlab.models import get_architecture

    for name in args.arch:
        get_architecture(name)  # fail on a typo before anything is read
    out = args.out or Path("runs") / f"{_timestamp()}-compare"
    native = _native_size(args)
    several = len(args.balance) > 1
    configs = [
        _run_config(args, name, out / (f"{name}-{balance}" if several else name), native, balance)
        for name in args.arch
        for balance in args.balance
    ]
    _, report = compare_runs(configs, out, _echo, not args.no_progress)
    _echo(f"comparison: {report}")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from ferlab.predict import Predictor, evaluate_folder
    from ferlab.report import plot_confusion

    predictor = Predictor.load(args.model, args.device, args.engine, args.match_sharpness, args.tta)
    card = predictor.card
    metrics = evaluate_folder(predictor, args.data, args.model, args.batch_size)
    for warning in metrics["overlap_warnings"] + metrics["data_shift_warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
        plot_confusion(metrics["confusion_matrix"], card.class_names, args.out / "confusion_matrix.png")
    if args.format == "json":
        print(json.dumps(metrics, indent=2))
        return 0
    _echo(f"{metrics['images']} images: accuracy {metrics['accuracy']:.4f}, macro-F1 {metrics['macro_f1']:.4f}, loss {metrics['loss']:.4f}")
    if "tta_gain" in metrics:
        _echo(f"test-time augmentation: accuracy {metrics['tta_gain']['accuracy_without']:.4f} without, "
              f"gain {metrics['tta_gain']['gain']:+.4f}")
    if "ece" in metrics:
        _echo(f"expected calibration error {metrics['ece']:.4f} at temperature {metrics['temperature']:.3f}")
    if metrics["sharpness_matched"]:
        _echo(f"{metrics['sharpness_matched']} images were much sharper than the training images and were blurred "
              f"to their sharpness first; scored as given: accuracy {metrics['as_given']['accuracy']:.4f} "
              "(--no-match-sharpness)")
    _echo(f"{'class':<12} {'precision':>9} {'recall':>7} {'f1':>7} {'support':>8}")
    for name, row in metrics["per_class"].items():
        _echo(f"{name:<12} {row['precision']:>9.3f} {row['recall']:>7.3f} {row['f1']:>7.3f} {row['support']:>8}")
    for skipped in metrics["skipped"]:
        _echo(f"skipped {skipped['path']}: {skipped['reason']}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    predictor = _load_predictor(args)
    from ferlab.video import VIDEO_EXTENSIONS

    videos = [p for p in args.inputs if p.suffix.lower() in VIDEO_EXTENSIONS]
    if videos:
        from ferlab.video import label_videos

        label_videos(predictor, videos, args.every, args.out or Path("runs") / f"{_timestamp()}-video",
                     args.annotate is not None, _echo)
        if len(videos) == len(args.inputs):
            return 0
    predictions = predictor.predict_files([p for p in args.inputs if p not in videos], args.batch_size)
    names = predictor.class_names
    detecting = args.faces != "none"
    if args.format == "json":
        print(json.dumps([p.to_json() for p in predictions], indent=2))
    elif args.format == "csv":
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        face_columns = ["face", "x", "y", "width", "height", "detector_score"] if detecting else []
        writer.writerow(["path", *face_columns, "label", *names, "blur_sigma", "error"])
        for p in predictions:
            face_cells = ([p.face, *(p.box or ()), f"{p.detector_score:.3f}"] if p.box else [""] * 6) if detecting else []
            writer.writerow([p.path, *face_cells, p.label or "",
                             *(f"{p.scores[n]:.6f}" if p.scores else "" for n in names), f"{p.blur_sigma:.2f}", p.error or ""])
        sys.stdout.write(buffer.getvalue())
    else:
        width = max([len(p.path) for p in predictions] + [4])
        print(f"{'path':<{width}}  {'label':<10}  " + "  ".join(f"{n[:8]:>8}" for n in names))
        for p in predictions:
            if p.error:
                print(f"{p.path:<{width}}  error: {p.error}")
            else:
                face = f"  face {p.face} at {p.box}" if p.box else ""
                blurred = f"  (blurred {p.blur_sigma:.1f} px to the training sharpness)" if p.blur_sigma else ""
                print(f"{p.path:<{width}}  {p.label:<10}  " + "  ".join(f"{p.scores[n]:>8.3f}" for n in names) + face + blurred)
    if args.annotate is not None:
        from ferlab.report import write_annotated

        written = write_annotated(predictions, args.annotate)
        print(f"annotated {len(written)} image(s) in {args.annotate}", file=sys.stderr)
    return 0 if any(p.error is None for p in predictions) else 1


def _cmd_audit(args: argparse.Namespace) -> int:
    from ferlab.audit import AuditConfig
    from ferlab.experiment import audit_data
    from ferlab.recipes import choose_image_size
    from ferlab.train import pick_device
    from ferlab.weights import default_architecture

    arch = default_architecture() if args.arch == "auto" else args.arch
    size = args.image_size or choose_image_size(pick_device("auto"), _native_size(args))
    out = args.out or Path("runs") / f"{_timestamp()}-audit"
    result, table, gallery = audit_data(
        args.data, _classes(args), arch, args.pretrained, size, out, AuditConfig(folds=args.folds),
        _echo, args.exclude, args.gallery,
    )
    _echo(f"{len(result.findings)} of {result.images} images flagged "
          f"(out-of-sample accuracy of the auditing classifier {result.out_of_sample_accuracy:.3f}):")
    for kind, count in result.counts.items():
        _echo(f"  {kind:<24} {count}")
    _echo(f"  duplicate groups: {result.duplicate_groups}, with conflicting labels: {result.conflicting_groups}")
    if result.caution:
        _echo(f"caution: {result.caution}")
    for rank, f in enumerate(result.findings[:10], start=1):
        _echo(f"  {rank:>3}. {f.path}  {', '.join(f.issues)}  given {f.given_label} ({f.given_probability:.2f}), "
              f"suggested {f.suggested_label} ({f.suggested_probability:.2f})")
    _echo(f"wrote {table} and {gallery}; review, mark exclude=yes, then train with --exclude {table}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from ferlab.checkpoint import load_model, resolve_model_path
    from ferlab.engine import (
        EngineUnavailable,
        OnnxEngine,
        check_parity,
        export_onnx,
        onnx_runtime_available,
        weights_digest,
    )

    if not onnx_runtime_available():
        raise EngineUnavailable("ferlab export --onnx needs onnx and onnxruntime: pip install 'ferlab[onnx]'")
    weights = resolve_model_path(args.model)
    model, card = load_model(weights, "cpu")
    path = export_onnx(model, card.image_size, args.out or weights.with_suffix(".onnx"), weights_digest(model))
    parity = check_parity(model, OnnxEngine(path), card.image_size)
    verdict = "matches" if parity.passed else "DOES NOT match"
    _echo(f"wrote {path}; it {verdict} PyTorch (max probability difference "
          f"{parity.max_probability_difference:.2e}, max logit difference {parity.max_logit_difference:.2e} "
          f"on {parity.images} random images)")
    return 0 if parity.passed else 1


def _cmd_archs(args: argparse.Namespace) -> int:
    from ferlab.models import ARCHITECTURES, build_model, count_parameters
    from ferlab.weights import default_architecture, find_weights, how_to_get

    rows: list[dict[str, Any]] = []
    for arch in ARCHITECTURES.values():
        source = find_weights(arch)
        rows.append({
            "arch": arch.name,
            "parameters": count_parameters(build_model(arch.name, 5)),
            "imagenet_top1": arch.imagenet_top1,
            "in_study": arch.in_study,
            "weights": f"{source.kind}: {source.location}" if source else None,
            "how_to_get": None if source else how_to_get(arch),
        })
    if args.format == "json":
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'architecture':<20} {'params (5 classes)':>18} {'ImageNet top-1':>14}  weights on this machine")
    for row in rows:
        mark = " (study)" if row["in_study"] else ""
        where = row["weights"] or "not found: " + str(row["how_to_get"])
        print(f"{row['arch'] + mark:<20} {row['parameters'] / 1e6:>16.1f} M {row['imagenet_top1']:>13.2f}%  {where}")
    print(f"\ndefault architecture here: {default_architecture()}")
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from ferlab.serve import ServeConfig, require_web, serve

    require_web()  # say what is missing before loading the model
    if args.max_upload_mb <= 0 or args.max_megapixels <= 0:
        raise ValueError("--max-upload-mb and --max-megapixels must be positive")
    config = ServeConfig(host=args.host, port=args.port, max_upload_bytes=int(args.max_upload_mb * 2**20),
                         max_pixels=int(args.max_megapixels * 1e6))
    predictor = _load_predictor(args)
    _echo(f"serving {args.model} ({predictor.card.arch}, engine {predictor.engine_reason}) on "
          f"http://{args.host}:{args.port}/ (API docs at /docs); Ctrl-C stops")
    serve(predictor, args.model, config)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from ferlab.demo import run_demo

    report = run_demo(args.out, args.per_class, f"compare-{_timestamp()}", _echo, progress=not args.no_progress)
    _echo(f"\ndemo finished; open the comparison in a browser: {report.resolve()}")
    return 0


COMMANDS = {
    "train": _cmd_train,
    "compare": _cmd_compare,
    "evaluate": _cmd_evaluate,
    "predict": _cmd_predict,
    "audit": _cmd_audit,
    "export": _cmd_export,
    "archs": _cmd_archs,
    "demo": _cmd_demo,
    "serve": _cmd_serve,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from ferlab._version import __version__

        print(__version__)
        return 0
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    from ferlab.data import DataError
    from ferlab.detect import DetectorUnavailable
    from ferlab.engine import EngineUnavailable
    from ferlab.experiment import TrainingInterrupted
    from ferlab.models import UnknownArchitecture
    from ferlab.serve import WebUnavailable
    from ferlab.weights import WeightsError, WeightsUnavailable

    try:
        return COMMANDS[args.command](args)
    except TrainingInterrupted as error:
        print(f"interrupted: {error}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except (DataError, UnknownArchitecture, WeightsError, WeightsUnavailable, EngineUnavailable,
            DetectorUnavailable, WebUnavailable, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
