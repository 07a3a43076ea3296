from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ferlab.data import (
    DataError,
    ImageSet,
    decode_images,
    discover,
    load_image,
    read_split,
    stratified_split,
    write_split,
)


def _save(path: Path, image: Image.Image) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


def _tree(root: Path, counts: dict[str, int]) -> Path:
    rng = np.random.default_rng(0)
    for name, n in counts.items():
        for i in range(n):
            pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
            _save(root / name / f"{i:03d}.png", Image.fromarray(pixels))
    return root


def test_discovery_is_sorted_and_selects_classes(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data", {"sad": 2, "angry": 3, "happy": 1, "disgust": 1})
    (root / "happy" / "notes.txt").write_text("not an image")
    (root / "happy" / ".DS_Store").write_text("hidden")
    files = discover(root)
    assert files.class_names == ("angry", "disgust", "happy", "sad")
    assert files.paths == tuple(sorted(files.paths, key=lambda p: (p.parent.name, p.name)))
    assert [s.path.name for s in files.skipped] == ["notes.txt"]
    chosen = discover(root, ["sad", "angry", "happy"])
    assert chosen.class_names == ("angry", "happy", "sad")
    assert chosen.counts() == {"angry": 3, "happy": 1, "sad": 2}


@pytest.mark.parametrize(
    ("layout", "message"),
    [
        ({}, "no class folders"),
        ({"happy": 2}, "at least two classes"),
        ({"happy": 2, "sad": 0}, "'sad' has no image files"),
    ],
)
def test_unusable_layouts_fail_before_training(tmp_path: Path, layout: dict[str, int], message: str) -> None:
    root = tmp_path / "data"
    root.mkdir()
    for name in layout:
        (root / name).mkdir()
    _tree(root, layout)
    with pytest.raises(DataError, match=message):
        discover(root)


def test_missing_folder_and_unknown_class(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        discover(tmp_path / "nowhere")
    root = _tree(tmp_path / "data", {"happy": 1, "sad": 1})
    with pytest.raises(DataError, match="surprise"):
        discover(root, ["happy", "surprise"])


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16", "I", "F", "LA", "1"])
def test_every_image_mode_becomes_rgb(tmp_path: Path, mode: str) -> None:
    gradient = np.tile(np.linspace(0, 1, 30), (20, 1))
    if mode == "I;16":
        image = Image.fromarray((gradient * 65535).astype(np.uint16))
    elif mode in ("I", "F"):
        # 32-bit integers on the 16-bit scale (how 16-bit PNGs often open); floats of any range.
        image = Image.fromarray((gradient * 60000).astype(np.int32 if mode == "I" else np.float32))
    else:
        image = Image.fromarray((gradient * 255).astype(np.uint8)).convert(mode)
    suffix = ".tif" if mode in ("I;16", "I", "F", "CMYK") else ".png"
    path = _save(tmp_path / f"image{suffix}", image)
    array = load_image(path, 16)
    assert array.shape == (16, 16, 3) and array.dtype == np.uint8
    # A left-to-right gradient survives the conversion (16-bit is rescaled, not clipped).
    assert array[8, -1].mean() > array[8, 0].mean() + 100


def test_palette_with_transparency_and_exif_rotation(tmp_path: Path) -> None:
    palette = Image.new("P", (10, 10), 0)
    palette.info["transparency"] = 0
    assert load_image(_save(tmp_path / "p.png", palette), 8).shape == (8, 8, 3)
    tall = Image.new("RGB", (10, 30), (255, 0, 0))
    exif = tall.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    path = tmp_path / "rotated.jpg"
    tall.save(path, exif=exif)
    with Image.open(path) as raw:
        assert raw.size == (10, 30)
    assert load_image(path, 12).shape == (12, 12, 3)


def test_bad_files_are_skipped_with_reasons(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data", {"happy": 3, "sad": 3})
    good = root / "happy" / "000.png"
    Image.open(good).convert("RGB").save(root / "happy" / "whole.jpg", quality=90)
    data = (root / "happy" / "whole.jpg").read_bytes()
    (root / "happy" / "truncated.jpg").write_bytes(data[: len(data) // 2])
    (root / "sad" / "text.jpg").write_text("this is not a picture")
    (root / "sad" / "empty.png").write_bytes(b"")
    decoded = decode_images(discover(root), 16)
    reasons = {s.path.name: s.reason for s in decoded.skipped}
    assert set(reasons) == {"truncated.jpg", "text.jpg", "empty.png"}
    assert "not a readable image" in reasons["text.jpg"]
    assert "truncated" in reasons["truncated.jpg"] or "unreadable" in reasons["truncated.jpg"]
    assert decoded.counts() == {"happy": 4, "sad": 3}


def test_a_class_with_only_broken_files_is_an_error(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data", {"happy": 2})
    (root / "sad").mkdir()
    (root / "sad" / "broken.jpg").write_text("nope")
    with pytest.raises(DataError, match="'sad'"):
        decode_images(discover(root), 16)


def test_split_is_reproducible_and_stratified() -> None:
    labels = [0] * 50 + [1] * 30 + [2] * 20
    train, valid = stratified_split(labels, 0.2, seed=7)
    assert (train, valid) == stratified_split(labels, 0.2, seed=7)
    assert stratified_split(labels, 0.2, seed=8)[1] != valid
    assert sorted(train + valid) == list(range(100))
    per_class = np.bincount(np.asarray(labels)[valid])
    assert per_class.tolist() == [10, 6, 4]


def test_split_keeps_rare_classes_on_both_sides() -> None:
    train, valid = stratified_split([0, 0, 1, 1, 1, 1, 1, 1, 1, 1], 0.1, seed=0)
    assert 0 in [([0, 0] + [1] * 8)[i] for i in valid]
    assert 0 in [([0, 0] + [1] * 8)[i] for i in train]


def test_split_file_round_trip(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data", {"happy": 5, "sad": 5})
    images: ImageSet = decode_images(discover(root), 8)
    train, valid = stratified_split(images.labels.tolist(), 0.4, seed=1)
    write_split(tmp_path / "split.csv", images.subset(train), images.subset(valid))
    assert read_split(tmp_path / "split.csv", images) == (train, valid)
    other = decode_images(discover(_tree(tmp_path / "other", {"a": 2, "b": 2})), 8)
    with pytest.raises(DataError, match="matches none"):
        read_split(tmp_path / "split.csv", other)


def test_shift_between_image_sets_is_described() -> None:
    import torch

    from ferlab.shift import describe_shift, image_statistics

    generator = torch.Generator().manual_seed(0)
    sharp = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8, generator=generator)
    blurred = torch.nn.functional.avg_pool2d(sharp.float(), 5, 1, 2).to(torch.uint8)
    reference = image_statistics(sharp)
    assert describe_shift(reference, image_statistics(sharp[:4]), "test") is None
    message = describe_shift(reference, image_statistics(blurred), "test")
    assert message is not None and "blurrier" in message


def test_decode_cache_serves_identical_images_and_rereads_changed_files(tmp_path: Path) -> None:
    import torch

    from ferlab.image_cache import ImageCache
    from ferlab.models import build_model

    root = _tree(tmp_path / "data", {"happy": 4, "sad": 4})
    plain = decode_images(discover(root), 16)
    cache = ImageCache(tmp_path / "cache")
    first = decode_images(discover(root), 16, cache=cache)
    assert (cache.hits, cache.misses) == (0, 8)
    second = decode_images(discover(root), 16, cache=cache)
    assert (cache.hits, cache.misses) == (8, 8)
    assert torch.equal(plain.images, first.images) and torch.equal(plain.images, second.images)
    # The same weights give the same predictions on cached and freshly decoded images.
    torch.manual_seed(0)
    model = build_model("resnet18", 2).eval()
    with torch.no_grad():
        assert torch.equal(model(plain.images.float() / 255), model(second.images.float() / 255))

    # A file rewritten in place (same name, new pixels) misses and is decoded afresh.
    changed = root / "sad" / "002.png"
    Image.fromarray(np.full((20, 24, 3), 200, dtype=np.uint8)).save(changed)
    third = decode_images(discover(root), 16, cache=cache)
    assert (cache.hits, cache.misses) == (15, 9)
    index = third.paths.index(changed)
    assert int(third.images[index].float().mean()) == 200
    assert torch.equal(third.images[index], decode_images(discover(root), 16).images[index])
    # Another size is another entry.
    decode_images(discover(root), 8, cache=cache)
    assert cache.misses == 17


def test_a_damaged_cache_entry_is_decoded_again(tmp_path: Path) -> None:
    from ferlab.image_cache import ImageCache

    root = _tree(tmp_path / "data", {"happy": 2, "sad": 2})
    cache = ImageCache(tmp_path / "cache")
    reference = decode_images(discover(root), 16, cache=cache)
    for entry in cache.root.rglob("*.npy"):
        entry.write_bytes(b"garbage")
    again = decode_images(discover(root), 16, cache=cache)
    assert cache.hits == 0 and again.images.equal(reference.images)
