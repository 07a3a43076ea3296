"""`ferlab demo`: the whole job on generated faces, with no data of the user's.

Draws a synthetic face-expression data set (synthetic.py), picks the two cheapest
architectures whose ImageNet weights are on this machine, and compares them on one split
with settings sized to finish in about a minute on 2 cores.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from ferlab.compare import compare_runs
from ferlab.config import AugmentConfig, DataConfig, ModelConfig, RunConfig, TrainConfig
from ferlab.recipes import resolve_recipe
from ferlab.synthetic import generate_dataset
from ferlab.train import pick_device
from ferlab.weights import available_architectures

__all__ = ["DEMO_SIZE", "demo_architectures", "demo_configs", "run_demo"]

DEMO_SIZE = 96  # px: the generated faces' size and the training size
# Cheapest first; resnet18 from scratch fills in when fewer have weights (the report says so).
CHEAP_FIRST = ("efficientnet_lite0", "mobilenet_v2", "resnet18", "efficientnet_lite1")


def demo_architectures(have: set[str]) -> list[str]:
    """The two cheapest architectures among `have` (names with weights here), topped up with
    ones trained from scratch."""
    archs = [a for a in CHEAP_FIRST if a in have][:2]
    return archs + [a for a in ("resnet18", "mobilenet_v2") if a not in archs][: 2 - len(archs)]


def demo_configs(data_dir: Path, out: Path, archs: Sequence[str]) -> list[RunConfig]:
    device = pick_device("auto")
    configs = []
    for arch in archs:
        recipe = resolve_recipe("fast", device, arch, native=DEMO_SIZE)
        configs.append(RunConfig(
            # Small batches: many optimiser steps on few images within the time budget.
            data=DataConfig(root=data_dir, image_size=DEMO_SIZE, batch_size=16),
            out_dir=out / arch,
            model=ModelConfig(arch=arch, pretrained="if-available"),
            train=TrainConfig(freeze_epochs=1, epochs=5, channels_last=recipe.channels_last,
                              cache_features=recipe.cache_features),
            augment=AugmentConfig(),
        ))
    return configs


def run_demo(folder: Path, per_class: int, run_name: str, echo: Callable[[str], None] = print,
             progress: bool = True) -> Path:
    """Generate the data (once) under folder/data, compare two architectures into
    folder/run_name; returns compare.html."""
    data_dir = folder / "data"
    if not data_dir.is_dir():
        echo(f"drawing {per_class} synthetic faces per expression into {data_dir}")
        generate_dataset(data_dir, per_class, image_size=DEMO_SIZE, seed=0)
    archs = demo_architectures({arch.name for arch, _ in available_architectures()})
    echo(f"comparing {', '.join(archs)} on {data_dir} ({DEMO_SIZE}x{DEMO_SIZE} px, 1 frozen + 5 unfrozen epochs)")
    _, report = compare_runs(demo_configs(data_dir, folder / run_name, archs), folder / run_name, echo, progress)
    return report
