"""A benchmark's results file, with what it ran on: speed figures only compare on the same CPU."""

from __future__ import annotations

import datetime
import json
import platform
from pathlib import Path
from typing import Any

import torch

__all__ = ["describe_machine", "write_results"]


def _cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (Linux); platform.processor() is often empty."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def describe_machine() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        # The widest vector instructions PyTorch uses here (AVX2, AVX512): on the same two
        # cores, convolution training ran 4-5 times as fast with AVX512 as without.
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }


def write_results(name: str, rows: list[dict[str, Any]], folder: Path) -> Path:
    """`folder`/`name`-<date>.json holding the date, the machine and `rows`."""
    folder.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now()
    path = folder / f"{name}-{now.date().isoformat()}.json"
    result = {"date": now.strftime("%Y-%m-%d %H:%M"), "machine": describe_machine(), "rows": rows}
    path.write_text(json.dumps(result, indent=2) + "\n")
    return path
