"""Shared fixtures: tiny generated data sets and an isolated, offline weight environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from ferlab.synthetic import generate_dataset

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "fer2013"


@pytest.fixture(autouse=True)
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Tests never touch the network (weights come from local files or not at all) and keep
    their decode cache in their own folder, never in the user's."""
    monkeypatch.setenv("FERLAB_OFFLINE", "1")
    monkeypatch.setenv("FERLAB_CACHE", str(tmp_path / "ferlab-cache"))


@pytest.fixture
def empty_caches(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Point the torchvision and Hugging Face caches at empty folders."""
    home = tmp_path / "torch-home"
    monkeypatch.setenv("TORCH_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    return home


@pytest.fixture(scope="session")
def faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 synthetic faces per expression at 32 px (read-only for tests: copy before changing)."""
    root = tmp_path_factory.mktemp("faces")
    generate_dataset(root, per_class=12, image_size=32, seed=1)
    return root


@pytest.fixture(scope="session")
def test_faces(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("test-faces")
    generate_dataset(root, per_class=4, image_size=32, seed=2)
    return root
