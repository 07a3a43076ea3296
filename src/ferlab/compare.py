"""`compare_runs`: several architectures (or balance settings) trained on one split, side by side.

The data is decoded and split once; each configuration is trained with `train_run` into its
own run folder, and compare.json / compare.html put the results and the study's observations
(best classes, most confused pairs, images every model gets wrong) next to each other.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from ferlab.config import RunConfig
from ferlab.evaluate import compare_errors
from ferlab.experiment import Echo, RunResult, prepare_data, train_run, write_json
from ferlab.models import get_architecture
from ferlab.report import write_compare_report

__all__ = ["compare_runs"]


def compare_runs(
    configs: Sequence[RunConfig], out_dir: Path, echo: Echo = print, progress: bool = False
) -> tuple[list[RunResult], Path]:
    """Train each config's architecture on one split of one data set; write out_dir/compare.html.

    The configs may differ in model and training settings only (each architecture gets its
    own recipe values); the data is decoded and split once, from the first.
    """
    if not configs:
        raise ValueError("compare needs at least one architecture")
    for config in configs:
        get_architecture(config.model.arch)  # fail on a typo before decoding anything
        if config.data != configs[0].data:
            raise ValueError("compared runs must share their data settings (folder, split, image size)")
    data = prepare_data(configs[0], echo, progress)
    results: list[RunResult] = []
    for config in configs:
        name = config.out_dir.name  # the architecture, or architecture-balance when several
        echo(f"\n=== {name} ===")
        start = time.perf_counter()
        result = train_run(config, data, echo, progress)
        echo(f"{name}: {(time.perf_counter() - start) / 60:.1f} min in all")
        results.append(result)
    split = "test" if data.test is not None else "valid"
    rows = [
        {
            "arch": r.run_dir.name,
            "balance": configs[i].train.balance,
            "parameters": r.parameters,
            "pretrained": r.weight_source.kind if r.weight_source.kind != "none" else "none (scratch)",
            "best_epoch": f"{r.fit.history[r.fit.best_index].phase} {r.fit.history[r.fit.best_index].epoch}",
            "accuracy": r.metrics[split]["accuracy"],
            "macro_f1": r.metrics[split]["macro_f1"],
            "valid_loss": r.metrics["valid"]["loss"],
            "train_minutes": r.fit.train_seconds / 60,
            "images_per_second": r.metrics["valid"]["images_per_second"],
            "recall": {c: v["recall"] for c, v in r.metrics[split]["per_class"].items()},
        }
        for i, r in enumerate(results)
    ]
    observations = compare_errors({r.run_dir.name: r.evaluations["valid"] for r in results})
    observations["most_confused"] = {
        r.run_dir.name: [f"{c['actual']} → {c['predicted']} ({c['count']})" for c in r.metrics["valid"]["most_confused"][:3]]
        for r in results
    }
    if data.test is not None:
        observations["test"] = True
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "compare.json", {"split": split, "rows": rows, "observations": observations})
    notes = [f"{r.arch} was trained from scratch (no pretrained weights)." for r in results if r.weight_source.kind == "none"]
    report = write_compare_report(
        rows, observations, {r.run_dir.name: f"{r.run_dir.relative_to(out_dir)}/report.html" for r in results}, [], out_dir / "compare.html", notes
    )
    return results, report
