"""Find images in a folder-per-class tree, decode them once, split them, serve batches.

Images are decoded a single time, centre-cropped to a square and resized to the training
size, and then held as one uint8 tensor (N, 3, S, S). Batches are cut from that tensor, so
an epoch costs no JPEG decoding; augmentation runs on the batch (see `augment.py`).
A file that cannot be read is skipped and reported with its reason, never fatal.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

from ferlab.image_cache import ImageCache

__all__ = [
    "IMAGE_EXTENSIONS",
    "DataError",
    "Decoder",
    "ImageSet",
    "LabelledFiles",
    "SkipImage",
    "SkippedFile",
    "batches",
    "decode_bytes",
    "decode_images",
    "discover",
    "discover_for_model",
    "exclude_files",
    "file_digests",
    "list_images",
    "load_image",
    "open_rgb",
    "read_exclusions",
    "read_rgb",
    "read_split",
    "square_array",
    "stratified_split",
    "try_load_image",
    "try_read_rgb",
    "write_split",
]

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"})

# A decompression-bomb guard that still admits large photos (PIL's default warns at 89 MP).
Image.MAX_IMAGE_PIXELS = 200_000_000


class DataError(ValueError):
    """The data cannot be used as given; the message says how to fix it."""


class SkipImage(ValueError):
    """Raised by a decoder for a readable file it cannot use; the message is the reason."""


Decoder = Callable[[bytes, int], np.ndarray]  # file bytes, size -> uint8 (S, S, 3)


@dataclass(frozen=True)
class SkippedFile:
    path: Path
    reason: str


@dataclass(frozen=True)
class LabelledFiles:
    """Image files with integer labels into `class_names`, plus what was set aside."""

    class_names: tuple[str, ...]
    paths: tuple[Path, ...]
    labels: tuple[int, ...]
    skipped: tuple[SkippedFile, ...] = ()

    def counts(self) -> dict[str, int]:
        """Images per class, in class order."""
        tally = np.bincount(np.asarray(self.labels, dtype=np.int64), minlength=len(self.class_names))
        return {name: int(n) for name, n in zip(self.class_names, tally, strict=True)}


@dataclass(frozen=True)
class ImageSet:
    """Decoded images ready for batching: uint8 (N, 3, S, S), int64 labels (N,)."""

    class_names: tuple[str, ...]
    paths: tuple[Path, ...]
    images: torch.Tensor
    labels: torch.Tensor
    skipped: tuple[SkippedFile, ...] = ()

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: Sequence[int]) -> ImageSet:
        index = torch.as_tensor(list(indices), dtype=torch.long)
        return ImageSet(
            class_names=self.class_names,
            paths=tuple(self.paths[i] for i in indices),
            images=self.images[index],
            labels=self.labels[index],
            skipped=(),
        )

    def counts(self) -> dict[str, int]:
        tally = torch.bincount(self.labels, minlength=len(self.class_names))
        return {name: int(n) for name, n in zip(self.class_names, tally.tolist(), strict=True)}


def list_images(folder: Path) -> tuple[list[Path], list[SkippedFile]]:
    """Image files below `folder` (sorted, recursive) and the other files found there.

    Hidden files (`.DS_Store` and the like) are neither listed nor reported.
    """
    images: list[Path] = []
    others: list[SkippedFile] = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        if path.suffix.lower() in IMAGE_EXTENSIONS:
            images.append(path)
        else:
            others.append(SkippedFile(path, f"not an image file extension ({path.suffix or 'none'})"))
    return images, others


def discover(root: Path, classes: Sequence[str] | None = None) -> LabelledFiles:
    """List the images of a folder-per-class tree; class names are folder names, sorted."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {str(root)!r} does not exist or is not a folder")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise DataError(
            f"{str(root)!r} has no class folders; expected one sub-folder per class, "
            "e.g. DATA/happy/*.jpg, DATA/sad/*.jpg"
        )
    if classes:
        missing = [c for c in classes if c not in folders]
        if missing:
            raise DataError(f"class folder(s) {missing} not found in {str(root)!r}; found {folders}")
        folders = sorted(classes)
    if len(folders) < 2:
        raise DataError(f"need at least two classes to train a classifier; {str(root)!r} has {folders}")
    paths: list[Path] = []
    labels: list[int] = []
    skipped: list[SkippedFile] = []
    for label, name in enumerate(folders):
        found, others = list_images(root / name)
        if not found:
            raise DataError(f"class {name!r} has no image files in {str(root / name)!r}")
        paths.extend(found)
        labels.extend([label] * len(found))
        skipped.extend(others)
    return LabelledFiles(tuple(folders), tuple(paths), tuple(labels), tuple(skipped))


EXCLUDE_MARKS = frozenset({"yes", "y", "true", "1", "x"})


def read_exclusions(path: Path) -> frozenset[Path]:
    """The files a CSV says to leave out, resolved: the rows whose `exclude` column is marked
    (yes/y/true/1/x; an audit.csv after review), or every row when there is no such column."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"exclusion list {str(path)!r} does not exist; make one with `ferlab audit DATA`")
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise DataError(f"{str(path)!r} needs a 'path' column (an audit.csv from `ferlab audit` has one)")
        marked = "exclude" in reader.fieldnames
        return frozenset(
            Path(row["path"]).resolve()
            for row in reader
            if row["path"] and (not marked or (row["exclude"] or "").strip().lower() in EXCLUDE_MARKS)
        )


def exclude_files(files: LabelledFiles, excluded: frozenset[Path], source: Path) -> LabelledFiles:
    """`files` without the excluded ones, which are reported as skipped with `source` named."""
    keep = [i for i, p in enumerate(files.paths) if p.resolve() not in excluded]
    dropped = [SkippedFile(p, f"excluded by {Path(source).name}") for p in files.paths if p.resolve() in excluded]
    return LabelledFiles(
        files.class_names,
        tuple(files.paths[i] for i in keep),
        tuple(files.labels[i] for i in keep),
        files.skipped + tuple(dropped),
    )


def discover_for_model(root: Path, class_names: Sequence[str]) -> LabelledFiles:
    """Images of the class folders under `root` that a model knows, labelled in its order.

    A folder may hold a subset of the model's classes (support 0 for the rest); folders the
    model does not know are reported as skipped, since their images cannot be scored.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder {str(root)!r} does not exist or is not a folder")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    known = [name for name in class_names if name in folders]
    if not known:
        raise DataError(
            f"{str(root)!r} has none of the model's class folders {list(class_names)}; "
            f"found {folders}"
        )
    paths: list[Path] = []
    labels: list[int] = []
    skipped = [
        SkippedFile(root / name, "class folder unknown to the model")
        for name in folders
        if name not in class_names
    ]
    for name in known:
        found, others = list_images(root / name)
        paths.extend(found)
        labels.extend([class_names.index(name)] * len(found))
        skipped.extend(others)
    if not paths:
        raise DataError(f"no image files under the class folders of {str(root)!r}")
    return LabelledFiles(tuple(class_names), tuple(paths), tuple(labels), tuple(skipped))


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB; 16/32-bit and float images are rescaled, not clipped."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or (image.mode == "I" and array.max() <= 65535):
            scale = 255.0 / 65535.0
        else:
            low, high = float(array.min()), float(array.max())
            array = array - low
            scale = 255.0 / (high - low) if high > low else 0.0
        image = Image.fromarray(np.clip(array * scale + 0.5, 0, 255).astype(np.uint8), mode="L")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    return image.convert("RGB")


def decode_bytes(data: bytes, image_size: int) -> np.ndarray:
    """Decode one file's bytes to uint8 (S, S, 3): EXIF-rotated, RGB, centre-cropped, resized.

    Raises OSError/ValueError (PIL's own) for unreadable or truncated files.
    """
    return square_array(open_rgb(data), image_size)


def square_array(image: Image.Image, image_size: int) -> np.ndarray:
    """The centre square of `image`, resized: uint8 (S, S, 3), as training decodes every file."""
    return np.asarray(ImageOps.fit(image, (image_size, image_size), Image.Resampling.BILINEAR), dtype=np.uint8)


def open_rgb(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()  # forces a full decode, so truncated files fail here and not mid-epoch
        return _to_rgb(ImageOps.exif_transpose(opened) or opened)


def read_rgb(path: Path) -> np.ndarray:
    """The whole image at its own size as uint8 (H, W, 3), EXIF-rotated and RGB (for face
    detection); raises OSError/ValueError for unreadable files."""
    return np.asarray(open_rgb(Path(path).read_bytes()), dtype=np.uint8)


def file_digests(paths: Sequence[Path], workers: int = 0) -> list[str]:
    """SHA-256 of each file's bytes (hex), in order; "" for a file that cannot be read."""

    def digest(path: Path) -> str:
        try:
            return hashlib.sha256(Path(path).read_bytes()).hexdigest()
        except OSError:
            return ""

    with ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
        return list(pool.map(digest, paths))


def load_image(
    path: Path, image_size: int, cache: ImageCache | None = None, decode: Decoder = decode_bytes, variant: str = ""
) -> np.ndarray:
    """`decode` (default `decode_bytes`) of the file at `path`, through `cache` when one is
    given; `variant` names a decoder other than the default in the cache key."""
    data = Path(path).read_bytes()
    if cache is None:
        return decode(data, image_size)
    key = cache.key(data, image_size, variant)
    array = cache.get(key, image_size)
    if array is None:
        array = decode(data, image_size)
        cache.put(key, array)
    return array


def try_load_image(
    path: Path, image_size: int, cache: ImageCache | None = None, decode: Decoder = decode_bytes, variant: str = ""
) -> np.ndarray | str:
    """`load_image`, or the reason the file cannot be read."""
    try:
        return load_image(path, image_size, cache, decode, variant)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return _unreadable(error)


def try_read_rgb(path: Path) -> np.ndarray | str:
    """`read_rgb`, or the reason the file cannot be read."""
    try:
        return read_rgb(path)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        return _unreadable(error)


def _unreadable(error: Exception) -> str:
    if isinstance(error, SkipImage):
        return str(error)
    if isinstance(error, UnidentifiedImageError):
        return "not a readable image (unknown format or not an image at all)"
    return f"unreadable image: {error}"


def _default_workers() -> int:
    return max(1, min(8, os.cpu_count() or 1))


def decode_images(
    files: LabelledFiles,
    image_size: int,
    workers: int = 0,
    progress: bool = False,
    require_every_class: bool = True,
    cache: ImageCache | None = None,
    decode: Decoder = decode_bytes,
    variant: str = "",
) -> ImageSet:
    """Decode every file once; failures become `SkippedFile`s and the rest an `ImageSet`.

    With `require_every_class`, a class whose files were all unreadable is an error (training
    needs examples of every class); evaluation passes False. With `cache`, files decoded
    before (same bytes, same size, same `variant` of `decode`) are read back instead.
    """
    workers = workers or _default_workers()
    images = torch.empty((len(files.paths), 3, image_size, image_size), dtype=torch.uint8)
    keep: list[int] = []
    skipped = list(files.skipped)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = pool.map(lambda p: try_load_image(p, image_size, cache, decode, variant), files.paths)
        if progress:
            from tqdm import tqdm

            results = tqdm(results, total=len(files.paths), desc="decoding images", leave=False)
        for index, result in enumerate(results):
            if isinstance(result, str):
                skipped.append(SkippedFile(files.paths[index], result))
                continue
            images[len(keep)] = torch.from_numpy(np.array(result)).permute(2, 0, 1)  # HWC -> CHW
            keep.append(index)
    decoded = ImageSet(
        class_names=files.class_names,
        paths=tuple(files.paths[i] for i in keep),
        images=images[: len(keep)].clone(),
        labels=torch.as_tensor([files.labels[i] for i in keep], dtype=torch.long),
        skipped=tuple(skipped),
    )
    empty = [name for name, n in decoded.counts().items() if n == 0]
    if not len(decoded):
        raise DataError("no readable images: " + "; ".join(f"{s.path.name}: {s.reason}" for s in skipped[:5]))
    if empty and require_every_class:
        raise DataError(
            f"class(es) {empty} have no readable images; every file there was skipped: "
            + "; ".join(f"{s.path.name}: {s.reason}" for s in skipped[:5])
        )
    return decoded


def stratified_split(
    labels: Sequence[int], valid_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Seeded split keeping each class's share: (train indices, valid indices), both sorted."""
    if not 0.0 < valid_fraction < 1.0:
        raise DataError(f"--valid-fraction must lie between 0 and 1, got {valid_fraction}")
    rng = np.random.default_rng(seed)
    label_array = np.asarray(labels)
    train: list[int] = []
    valid: list[int] = []
    for label in np.unique(label_array):
        members = np.flatnonzero(label_array == label)
        rng.shuffle(members)
        n_valid = round(len(members) * valid_fraction)
        if len(members) >= 2:
            n_valid = min(max(n_valid, 1), len(members) - 1)  # both sides see every class
        valid.extend(members[:n_valid].tolist())
        train.extend(members[n_valid:].tolist())
    return sorted(train), sorted(valid)


def write_split(path: Path, train: ImageSet, valid: ImageSet) -> None:
    """split.csv: one row per image with its class and which side it fell on."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "label", "split"])
        for side, images in (("train", train), ("valid", valid)):
            for image_path, label in zip(images.paths, images.labels.tolist(), strict=True):
                writer.writerow([str(image_path), images.class_names[label], side])


def read_split(path: Path, images: ImageSet) -> tuple[list[int], list[int]]:
    """Reproduce a saved split on freshly decoded images (matched by path)."""
    position = {str(p): i for i, p in enumerate(images.paths)}
    train: list[int] = []
    valid: list[int] = []
    missing = 0
    with open(path, newline="") as handle:
        for row in csv.DictReader(handle):
            index = position.get(row["path"])
            if index is None:
                missing += 1
                continue
            (valid if row["split"] == "valid" else train).append(index)
    if not train or not valid:
        raise DataError(
            f"split file {str(path)!r} matches none of the images found "
            f"({missing} rows unmatched); was it written for this data folder?"
        )
    return sorted(train), sorted(valid)


def batches(
    size: int, batch_size: int, shuffle: bool, generator: torch.Generator | None = None
) -> Iterator[torch.Tensor]:
    """Index batches over `size` items; shuffled with `generator` when asked."""
    order = torch.randperm(size, generator=generator) if shuffle else torch.arange(size)
    for start in range(0, size, batch_size):
        yield order[start : start + batch_size]
