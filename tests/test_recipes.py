"""Recipes: what `fast` picks from the hardware and data, what `study` fixes, what overrides them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ferlab.cli import main
from ferlab.recipes import choose_image_size, native_size, resolve_recipe

CPU, GPU = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize(("native", "expected"), [(48, 64), (70, 80), (96, 96), (400, 112), (None, 112)])
def test_fast_sizes_inputs_by_the_data_on_a_cpu(native: int | None, expected: int) -> None:
    assert choose_image_size(CPU, native) == expected
    assert choose_image_size(GPU, native) == 224


def test_fast_uses_channels_last_except_for_vgg_and_caches_on_a_cpu() -> None:
    fast = resolve_recipe("fast", CPU, "resnet34", 48)
    assert (fast.image_size, fast.channels_last, fast.cache_features, fast.train_bn) == (64, True, True, False)
    assert fast.keep_bn_statistics
    assert resolve_recipe("fast", CPU, "vgg19_bn", 48).channels_last is False
    assert resolve_recipe("fast", GPU, "resnet34", 48).channels_last is False


def test_study_is_the_study_whatever_the_machine() -> None:
    for device in (CPU, GPU):
        study = resolve_recipe("study", device, "resnet34", 48)
        assert (study.image_size, study.batch_size, study.freeze_epochs, study.epochs) == (224, 64, 1, 3)
        assert study.flip_vertical and study.train_bn and not study.keep_bn_statistics
        assert not (study.channels_last or study.cache_features or study.decode_cache)
    with pytest.raises(ValueError, match="fast, study"):
        resolve_recipe("quick", CPU, "resnet34", 48)


def test_native_size_reads_headers_and_ignores_broken_files(tmp_path: Path) -> None:
    paths = []
    for i, side in enumerate((40, 48, 48, 60, 300)):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.zeros((side, side + 10, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    broken = tmp_path / "broken.png"
    broken.write_text("no image")
    assert native_size([*paths, broken]) == 48
    assert native_size([]) is None


def test_explicit_options_override_the_recipe(faces: Path, tmp_path: Path) -> None:
    run = tmp_path / "study"
    code = main(["train", str(faces), "--recipe", "study", "--image-size", "32", "--epochs", "1",
                 "--freeze-epochs", "0", "--batch-size", "16", "--arch", "mobilenet_v2",
                 "--pretrained", "none", "--no-train-bn", "--out", str(run), "--no-progress"])
    assert code == 0
    config = json.loads((run / "config.json").read_text())
    assert config["recipe"] == "study"
    assert config["data"]["image_size"] == 32 and config["data"]["batch_size"] == 16  # given
    assert config["augment"]["flip_vertical"] is True  # the study's, not given
    assert config["train"]["train_bn"] is False and config["train"]["channels_last"] is False
    assert config["train"]["cache_features"] is False and config["data"]["decode_cache"] is False


def test_fast_default_picks_the_size_from_the_images(faces: Path, tmp_path: Path) -> None:
    run = tmp_path / "fast"
    assert main(["train", str(faces), "--epochs", "1", "--freeze-epochs", "1", "--batch-size", "16",
                 "--arch", "mobilenet_v2", "--pretrained", "none", "--out", str(run), "--no-progress"]) == 0
    config = json.loads((run / "config.json").read_text())
    assert config["data"]["image_size"] == 64  # the faces are 32 px: the CPU floor of 64
    assert config["train"]["channels_last"] is True and config["data"]["decode_cache"] is True
    assert json.loads((run / "model.json").read_text())["image_size"] == 64
