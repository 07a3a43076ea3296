"""Render results: the live epoch table, plots (PNG) and self-contained HTML reports.

Everything here takes result data (records, metrics dicts, arrays), never a model, and
writes files or returns text. Plots use matplotlib's Agg backend, so no display is needed.
"""

from __future__ import annotations

import base64
import html
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from ferlab.audit import AuditResult
from ferlab.evaluate import TopLoss
from ferlab.predict import Prediction
from ferlab.train import EpochRecord

__all__ = [
    "RunReport",
    "epoch_table_header",
    "format_counts",
    "format_epoch_row",
    "plot_confusion",
    "plot_expression_over_time",
    "plot_image_grid",
    "plot_loss_curves",
    "plot_reliability",
    "plot_top_losses",
    "write_annotated",
    "write_audit_gallery",
    "write_compare_report",
    "write_run_report",
]

COLUMNS = ("epoch", "train_loss", "valid_loss", "accuracy", "time")


def _clock(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes:02d}:{secs:02d}"


def epoch_table_header() -> str:
    """fastai's column header: epoch, train_loss, valid_loss, accuracy, time."""
    return "  ".join(f"{c:<10}" for c in COLUMNS).rstrip()


def format_epoch_row(record: EpochRecord) -> str:
    cells = (
        str(record.epoch), f"{record.train_loss:.6f}", f"{record.valid_loss:.6f}",
        f"{record.accuracy:.6f}", _clock(record.seconds),
    )
    return "  ".join(f"{c:<10}" for c in cells).rstrip()


def format_counts(counts: Mapping[str, Mapping[str, int]]) -> str:
    """A text table of images per class, one column per split (e.g. train/valid/test)."""
    splits = list(counts)
    names = list(dict.fromkeys(name for split in splits for name in counts[split]))
    width = max(8, *(len(n) for n in names))
    lines = [f"{'class':<{width}}  " + "  ".join(f"{s:>7}" for s in splits)]
    for name in names:
        lines.append(f"{name:<{width}}  " + "  ".join(f"{counts[s].get(name, 0):>7}" for s in splits))
    lines.append(f"{'total':<{width}}  " + "  ".join(f"{sum(counts[s].values()):>7}" for s in splits))
    return "\n".join(lines)


def plot_loss_curves(step_losses: Sequence[float], history: Sequence[EpochRecord], path: Path) -> Path:
    """Train loss per step (and its running mean) with valid loss at each epoch's end."""
    figure, axis = plt.subplots(figsize=(7, 4))
    steps = np.arange(1, len(step_losses) + 1)
    if len(step_losses):
        axis.plot(steps, step_losses, color="tab:blue", alpha=0.3, label="train loss (step)")
        window = max(1, len(step_losses) // 20)
        smooth = np.convolve(step_losses, np.ones(window) / window, mode="valid")
        axis.plot(steps[window - 1 :], smooth, color="tab:blue", label="train loss (smoothed)")
    if history:
        ends = [round((i + 1) * len(step_losses) / len(history)) for i in range(len(history))]
        axis.plot(ends, [r.valid_loss for r in history], "o-", color="tab:orange", label="valid loss")
        frozen = sum(1 for r in history if r.phase == "frozen")
        if 0 < frozen < len(history):
            axis.axvline(ends[frozen - 1], color="grey", linestyle=":", label="body unfrozen")
    axis.set_xlabel("optimiser step")
    axis.set_ylabel("cross-entropy loss")
    axis.set_title("Loss curves")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_confusion(matrix: Sequence[Sequence[int]], class_names: Sequence[str], path: Path) -> Path:
    """Counts and row-normalised (recall per class) confusion matrices side by side."""
    counts = np.asarray(matrix, dtype=float)
    normalised = counts / np.clip(counts.sum(axis=1, keepdims=True), 1, None)
    size = 3 + 0.6 * len(class_names)
    figure, axes = plt.subplots(1, 2, figsize=(2 * size, size))
    for axis, values, title, fmt in (
        (axes[0], counts, "Confusion matrix (counts)", "{:.0f}"),
        (axes[1], normalised, "Row-normalised (recall)", "{:.2f}"),
    ):
        axis.imshow(values, cmap="Blues")
        axis.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
        axis.set_yticks(range(len(class_names)), class_names)
        axis.set_xlabel("Predicted")
        axis.set_ylabel("Actual")
        axis.set_title(title)
        peak = values.max() if values.size else 0
        for (row, col), value in np.ndenumerate(values):
            colour = "white" if value > peak / 2 else "black"
            axis.text(col, row, fmt.format(value), ha="center", va="center", color=colour, fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_reliability(calibration: Mapping[str, Mapping[str, Any]], path: Path) -> Path:
    """Reliability diagrams, one per split: accuracy against confidence per bin, before and
    after temperature scaling; the diagonal is perfect calibration."""
    splits = list(calibration) or ["valid"]
    figure, axes = plt.subplots(1, len(splits), figsize=(4.6 * len(splits), 4.4), squeeze=False)
    for axis, split in zip(axes.flat, splits, strict=True):
        summary = calibration.get(split, {})
        axis.plot([0, 1], [0, 1], color="grey", linestyle=":", label="perfect")
        for key, colour, name in (("before", "tab:red", "before"), ("after", "tab:blue", "after")):
            table = summary.get(f"reliability_{key}")
            if not table:
                continue
            points = [(c, a) for c, a in zip(table["confidence"], table["accuracy"], strict=True) if c is not None]
            if points:
                xs, ys = zip(*points, strict=True)
                axis.plot(xs, ys, "o-", color=colour,
                          label=f"{name} (ECE {summary[f'ece_{key}']:.3f})")
        axis.set_xlim(0, 1)
        axis.set_ylim(0, 1)
        axis.set_xlabel("confidence (top probability)")
        axis.set_ylabel("accuracy")
        title = f"{split}: T = {summary['temperature']:.2f}" if "temperature" in summary else split
        axis.set_title(title)
        axis.legend(loc="upper left", fontsize=8)
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def _trust_block(calibration: Mapping[str, Mapping[str, Any]], tta: Mapping[str, Mapping[str, float]]) -> str:
    """Calibration and test-time augmentation, measured, per split."""
    if not calibration and not tta:
        return ""
    rows = []
    for split in dict.fromkeys([*calibration, *tta]):
        cal, aug = calibration.get(split, {}), tta.get(split, {})
        rows.append((
            split,
            f"{cal['ece_before']:.4f}" if cal else "-", f"{cal['ece_after']:.4f}" if cal else "-",
            f"{cal['nll_before']:.4f}" if cal else "-", f"{cal['nll_after']:.4f}" if cal else "-",
            f"{aug['accuracy']:.4f}" if aug else "-", f"{aug['accuracy_tta']:.4f}" if aug else "-",
            f"{aug['gain']:+.4f}" if aug else "-",
        ))
    return (
        "<h2>Calibration and test-time augmentation</h2>"
        "<p>Scores are divided by a temperature fitted on the validation split; the expected "
        "calibration error (ECE) is the gap between confidence and accuracy (0 is perfect). "
        "Test-time augmentation (TTA: the image, its mirror image and four corner crops, "
        "averaged) is measured here, not assumed: use <code>--tta</code> where it gains.</p>"
        + _table(("split", "ECE before", "ECE after", "NLL before", "NLL after",
                  "accuracy", "accuracy with TTA", "TTA gain"), rows)
    )


def plot_image_grid(
    images: Sequence[np.ndarray], titles: Sequence[str], path: Path, columns: int = 4, title: str = ""
) -> Path:
    """uint8 HWC images in a grid with a caption each."""
    count = max(1, len(images))
    columns = min(columns, count)
    rows = (count + columns - 1) // columns
    figure, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.9 * rows), squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, image, caption in zip(axes.flat, images, titles, strict=False):
        axis.imshow(image)
        axis.set_title(caption, fontsize=8)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def plot_top_losses(items: Sequence[TopLoss], images: Sequence[np.ndarray], path: Path) -> Path:
    """fastai's plot_top_losses: predicted / actual / loss / probability of the actual class."""
    titles = [f"{t.predicted}/{t.actual}\nloss {t.loss:.2f}, p {t.probability:.2f}" for t in items]
    return plot_image_grid(images, titles, path, columns=3, title="Prediction/Actual/Loss/Probability")


def _embed(path: Path) -> str:
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(Path(path).stem)}">'


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join(
        "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


STYLE = """
body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
table{border-collapse:collapse;margin:.5em 0 1.5em}td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}
th{background:#f3f3f3}td:first-child,th:first-child{text-align:left}img{max-width:100%}
.warn{background:#fff3cd;border:1px solid #e0c36c;padding:.6em 1em}code{background:#f3f3f3;padding:0 .2em}
"""


def _page(title: str, body: str) -> str:
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>\n"
    )


def _metrics_block(name: str, metrics: Mapping[str, Any]) -> str:
    rows = [
        (cls, f"{v['precision']:.3f}", f"{v['recall']:.3f}", f"{v['f1']:.3f}", v["support"])
        for cls, v in metrics["per_class"].items()
    ]
    confused = ", ".join(
        f"{c['actual']} → {c['predicted']} ({c['count']})" for c in metrics["most_confused"][:5]
    ) or "none"
    return (
        f"<h3>{html.escape(name)}: accuracy {metrics['accuracy']:.4f}, macro-F1 "
        f"{metrics['macro_f1']:.4f}, loss {metrics['loss']:.4f} ({metrics['images']} images)</h3>"
        + _table(("class", "precision", "recall", "F1", "support"), rows)
        + f"<p>Most confused (actual → predicted): {html.escape(confused)}</p>"
        + f"<p>Inference: {metrics['images_per_second']:.1f} images/s "
        f"({html.escape(str(metrics.get('engine', 'torch')))})</p>"
    )


@dataclass(frozen=True)
class RunReport:
    """What a run's report.html shows."""

    title: str
    arch: str
    weight_source: str
    pretrained: bool
    counts: Mapping[str, Mapping[str, int]]  # split -> class -> images
    history: Sequence[EpochRecord]
    best_index: int
    metrics: Mapping[str, Mapping[str, Any]]  # split -> summarize() output
    skipped: Sequence[Mapping[str, str]]
    figures: Sequence[Path]
    notes: Sequence[str] = field(default_factory=tuple)
    settings: Mapping[str, Any] = field(default_factory=dict)
    calibration: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # split -> summary
    tta: Mapping[str, Mapping[str, float]] = field(default_factory=dict)  # split -> gain


def write_run_report(report: RunReport, path: Path) -> Path:
    parts: list[str] = []
    warnings = list(report.notes)
    if not report.pretrained:
        warnings.insert(0, f"Trained from scratch, no pretrained weights ({report.weight_source}).")
    parts += [f"<p class='warn'>{html.escape(w)}</p>" for w in warnings]
    parts.append(
        f"<p>Architecture <b>{html.escape(report.arch)}</b>; starting weights: "
        f"{html.escape(report.weight_source)}.</p>"
    )
    parts.append("<h2>Data</h2>")
    splits = list(report.counts)
    names = list(dict.fromkeys(n for s in splits for n in report.counts[s]))
    rows = [[n, *(report.counts[s].get(n, 0) for s in splits)] for n in names]
    rows.append(["total", *(sum(report.counts[s].values()) for s in splits)])
    parts.append(_table(("class", *splits), rows))
    parts.append(f"<h2>Skipped files ({len(report.skipped)})</h2>")
    if report.skipped:
        parts.append(_table(("file", "reason"), [(s["path"], s["reason"]) for s in report.skipped]))
    else:
        parts.append("<p>None: every file was read.</p>")
    parts.append("<h2>Training</h2>")
    history_rows = [
        (
            f"{r.phase} {r.epoch}" + (" (best)" if i == report.best_index else ""),
            f"{r.train_loss:.6f}", f"{r.valid_loss:.6f}", f"{r.accuracy:.6f}", _clock(r.seconds),
        )
        for i, r in enumerate(report.history)
    ]
    parts.append(_table(COLUMNS, history_rows))
    parts.append("<h2>Results (best checkpoint)</h2>")
    for split, metrics in report.metrics.items():
        parts.append(_metrics_block(split, metrics))
    parts.append(_trust_block(report.calibration, report.tta))
    for figure in report.figures:
        parts.append(f"<h2>{html.escape(figure.stem.replace('_', ' '))}</h2>{_embed(figure)}")
    if report.settings:
        import json

        parts.append(
            "<h2>Settings</h2><pre>" + html.escape(json.dumps(report.settings, indent=2)) + "</pre>"
        )
    path.write_text(_page(report.title, "".join(parts)), encoding="utf-8")
    return path


def write_compare_report(
    rows: Sequence[Mapping[str, Any]],
    observations: Mapping[str, Any],
    run_links: Mapping[str, str],
    figures: Sequence[Path],
    path: Path,
    notes: Sequence[str] = (),
) -> Path:
    """compare.html: the side-by-side table, the shared errors, links to each run's report."""
    header = (
        "run", "balance", "parameters", "pretrained", "best epoch", "accuracy", "macro-F1",
        "recall per class", "valid loss", "train minutes", "inference img/s",
    )
    table_rows = [
        (
            r["arch"], r.get("balance", "none"), f"{r['parameters'] / 1e6:.1f} M", r["pretrained"],
            r["best_epoch"], f"{r['accuracy']:.4f}", f"{r['macro_f1']:.4f}",
            ", ".join(f"{c} {v:.2f}" for c, v in r.get("recall", {}).items()),
            f"{r['valid_loss']:.4f}", f"{r['train_minutes']:.2f}", f"{r['images_per_second']:.0f}",
        )
        for r in rows
    ]
    parts = [f"<p class='warn'>{html.escape(n)}</p>" for n in notes]
    parts.append(_table(header, table_rows))
    if "test" in observations:
        parts.append("<p>Accuracy and macro-F1 above are on the test folder.</p>")
    parts.append("<h2>Observations</h2><ul>")
    for name, ranking in observations["classes_by_f1"].items():
        parts.append(
            f"<li><b>{html.escape(name)}</b>: classes from best to worst F1: "
            f"{html.escape(', '.join(ranking))}; most confused: "
            f"{html.escape(', '.join(observations['most_confused'][name]) or 'none')}</li>"
        )
    wrong = observations["wrong_by_all"]
    parts.append(
        f"<li>{len(wrong)} of {observations['images']} validation images are misclassified by "
        "every model.</li></ul>"
    )
    if wrong:
        parts.append(
            _table(
                ("image", "actual", "predicted"),
                [
                    (w["path"], w["actual"], ", ".join(f"{k}: {v}" for k, v in w["predicted"].items()))
                    for w in wrong[:50]
                ],
            )
        )
    for figure in figures:
        parts.append(f"<h2>{html.escape(figure.stem.replace('_', ' '))}</h2>{_embed(figure)}")
    parts.append("<h2>Runs</h2><ul>")
    for name, link in run_links.items():
        parts.append(f"<li><a href='{html.escape(link)}'>{html.escape(name)}</a></li>")
    parts.append("</ul>")
    path.write_text(_page("ferlab compare", "".join(parts)), encoding="utf-8")
    return path


GALLERY_STYLE = """
.grid{display:flex;flex-wrap:wrap;gap:10px}.card{border:1px solid #ccc;padding:6px;width:150px;
font-size:12px;text-align:center}.card img{width:144px;height:144px;image-rendering:pixelated}
.card.exclude{background:#fde2e2}.issues{color:#a33}
"""


def _png(image: np.ndarray) -> str:
    """uint8 (S, S, 3) -> a data: URL of its PNG."""
    from io import BytesIO

    from PIL import Image

    buffer = BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def write_audit_gallery(result: AuditResult, images: Sequence[np.ndarray], path: Path, source: str) -> Path:
    """audit.html: a card per finding (image, given and suggested label, issues), ranked as
    in audit.csv, for a person to review. `images` are uint8 HWC, one per finding shown."""
    summary = _table(
        ("issue", "images"),
        [(kind, count) for kind, count in result.counts.items()]
        + [("duplicate groups (conflicting)", f"{result.duplicate_groups} ({result.conflicting_groups})")],
    )
    cards = []
    for rank, (finding, image) in enumerate(zip(result.findings, images, strict=False), start=1):
        group = "" if finding.group is None else f" · group {finding.group}"
        cards.append(
            f"<div class='card{' exclude' if finding.exclude else ''}'>"
            f"<img src='{_png(image)}' alt='{html.escape(finding.path.name)}'>"
            f"<div><b>#{rank}</b> {html.escape(finding.path.name)}</div>"
            f"<div>given <b>{html.escape(finding.given_label)}</b> ({finding.given_probability:.2f})</div>"
            f"<div>suggested <b>{html.escape(finding.suggested_label)}</b> ({finding.suggested_probability:.2f})</div>"
            f"<div class='issues'>{html.escape(', '.join(finding.issues))}{group}</div></div>"
        )
    shown = min(len(images), len(result.findings))
    caution = f"<p class='warn'>{html.escape(result.caution)}</p>" if result.caution else ""
    body = caution + (
        f"<p>{len(result.findings)} of {result.images} images of <code>{html.escape(source)}</code> are flagged; "
        f"the first {shown} are shown, ranked as in <code>audit.csv</code>. Probabilities are out of "
        f"sample (cross-validated on ImageNet features; {result.out_of_sample_accuracy:.3f} accuracy), so "
        "a low probability for the given label is a reason to look, not a verdict. Red cards are "
        "pre-marked <code>exclude=yes</code> (near-blank, or the same pixels under different labels); "
        "mark the others you confirm in audit.csv, then train with <code>--exclude audit.csv</code>.</p>"
        + summary + "<div class='grid'>" + "".join(cards) + "</div>"
    )
    page = _page("ferlab audit", body).replace("</style>", GALLERY_STYLE + "</style>", 1)
    path.write_text(page, encoding="utf-8")
    return path


def write_annotated(predictions: Sequence[Prediction], out_dir: Path) -> list[Path]:
    """A copy of each scored image with every face's box and label (and top score) drawn,
    as OUT_DIR/<name>.png; a whole-image prediction gets its label in the corner."""
    from PIL import Image, ImageDraw

    from ferlab.data import read_rgb

    out_dir.mkdir(parents=True, exist_ok=True)
    by_path: dict[str, list[Prediction]] = {}
    for p in predictions:
        if p.error is None and p.label is not None:
            by_path.setdefault(p.path, []).append(p)
    written = []
    for index, (source, faces) in enumerate(by_path.items()):
        image = Image.fromarray(read_rgb(Path(source)))
        draw = ImageDraw.Draw(image)
        width = max(2, min(image.size) // 150)
        for p in faces:
            text = f"{p.label} {max(p.scores.values()):.2f}"
            x, y, w, h = p.box or (0, 0, 0, 0)
            if p.box:
                draw.rectangle((x, y, x + w, y + h), outline=(255, 40, 40), width=width)
            left, top, right, bottom = draw.textbbox((x, max(0, y - 12)), text)
            draw.rectangle((left - 2, top - 2, right + 2, bottom + 2), fill=(255, 40, 40))
            draw.text((x, max(0, y - 12)), text, fill=(255, 255, 255))
        path = out_dir / f"{index:04d}-{Path(source).stem}.png"  # numbered: two photos may share a name
        image.save(path)
        written.append(path)
    return written


def plot_expression_over_time(
    rows: Sequence[tuple[float, int, Mapping[str, float]]], class_names: Sequence[str], path: Path, most: int = 4
) -> Path:
    """Per person (face id), each class's probability against time (seconds): one panel per
    id, the `most` ids seen in the most frames. `rows` are (time, face id, scores)."""
    by_id: dict[int, list[tuple[float, Mapping[str, float]]]] = {}
    for time, face_id, scores in rows:
        by_id.setdefault(face_id, []).append((time, scores))
    shown = sorted(by_id, key=lambda i: (-len(by_id[i]), i))[:most] or [0]
    figure, axes = plt.subplots(len(shown), 1, figsize=(8, 2.2 * len(shown)), squeeze=False, sharex=True)
    for axis, face_id in zip(axes[:, 0], shown, strict=True):
        points = by_id.get(face_id, [])
        for name in class_names:
            axis.plot([t for t, _ in points], [s[name] for _, s in points], ".-", label=name)
        axis.set_ylim(0, 1)
        axis.set_ylabel("probability")
        axis.set_title(f"face #{face_id} ({len(points)} frames)", fontsize=9)
        axis.grid(alpha=0.3)
    axes[0, 0].legend(loc="upper right", fontsize=7, ncol=len(class_names))
    axes[-1, 0].set_xlabel("time (s)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
