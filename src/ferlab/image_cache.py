"""Decoded images on disk, keyed by file content and training size.

Decoding and resizing is the part of data preparation that a second run, a `compare` or a
benchmark would repeat for nothing. The key is the SHA-256 of the file's bytes, the target
size and the version of the decoding procedure, so a changed file (same name, new pixels)
misses and is decoded afresh, and no stale entry is ever served. Entries are plain `.npy`
arrays read with `allow_pickle=False`: reading the cache runs no code.
"""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import numpy as np

__all__ = ["DECODE_VERSION", "ImageCache", "default_cache_dir"]

# Bump when load_image's output changes for the same file (resampling, cropping, colour).
DECODE_VERSION = 1


def default_cache_dir() -> Path:
    """$FERLAB_CACHE, else ~/.cache/ferlab (XDG_CACHE_HOME respected)."""
    if os.environ.get("FERLAB_CACHE"):
        return Path(os.environ["FERLAB_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "ferlab"


class ImageCache:
    """A folder of decoded uint8 (S, S, 3) arrays; safe to share between threads."""

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = Path(folder) if folder is not None else default_cache_dir()
        self.root = self.folder / f"decoded-v{DECODE_VERSION}"
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @staticmethod
    def key(data: bytes, image_size: int, variant: str = "") -> str:
        """By content, size and decoding variant (e.g. "faces-haar": the face cropped out)."""
        return f"{hashlib.sha256(data).hexdigest()}-{image_size}" + (f"-{variant}" if variant else "")

    def _path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npy"

    def get(self, key: str, image_size: int) -> np.ndarray | None:
        """The cached array, or None (absent, unreadable or of the wrong shape)."""
        try:
            array = np.load(self._path(key), allow_pickle=False)
        except (OSError, ValueError):
            array = None
        if array is not None and (array.dtype != np.uint8 or array.shape != (image_size, image_size, 3)):
            array = None
        with self._lock:
            if array is None:
                self.misses += 1
            else:
                self.hits += 1
        return array

    def put(self, key: str, array: np.ndarray) -> None:
        """Store `array`; a full disk or a read-only folder only costs the speed-up."""
        path = self._path(key)
        temporary = path.with_name(f"{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(temporary, "wb") as handle:
                np.save(handle, np.ascontiguousarray(array), allow_pickle=False)
            temporary.replace(path)  # atomic: readers never see half an entry
        except OSError:
            temporary.unlink(missing_ok=True)
