"""Fashion-MNIST loader: pure numpy + gzip, so the board and the profiler need no TensorFlow.

The data set is never downloaded: it comes from the Debian package `dataset-fashion-mnist`, which
installs the original gzipped IDX files under /usr/share/datasets/fashion-mnist.
"""
from __future__ import annotations

import functools
import gzip
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
DATA_DIR_ENV = "FASHION_MNIST_DIR"
DEBIAN_PACKAGE = "dataset-fashion-mnist"

CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10000),
}
_IMAGES_MAGIC = 0x00000803  # unsigned byte, 3 dimensions
_LABELS_MAGIC = 0x00000801  # unsigned byte, 1 dimension


class DatasetMissingError(FileNotFoundError):
    """The Fashion-MNIST files are not where we looked."""


class DatasetFormatError(ValueError):
    """A file exists but is not the IDX file we expected."""


@dataclass(frozen=True)
class Split:
    """One split of Fashion-MNIST: images (N, 28, 28) uint8 and labels (N,) uint8."""

    name: str
    images: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The directory to read: the argument, else $FASHION_MNIST_DIR, else the Debian location."""
    if path is not None:
        return Path(path)
    return Path(os.environ.get(DATA_DIR_ENV, DEFAULT_DIR))


def _read_idx(path: Path, magic: int, shape_tail: tuple[int, ...], count: int) -> np.ndarray:
    try:
        with gzip.open(path, "rb") as f:
            raw = f.read()
    except OSError as e:  # not gzip, truncated, unreadable
        raise DatasetFormatError(f"{path}: cannot read as a gzipped IDX file ({e}); "
                                 f"reinstall with `apt-get install --reinstall {DEBIAN_PACKAGE}`") from e
    ndim = 1 + len(shape_tail)
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise DatasetFormatError(f"{path}: {len(raw)} bytes, shorter than an IDX header ({header_len})")
    got_magic = int.from_bytes(raw[0:4], "big")
    if got_magic != magic:
        raise DatasetFormatError(f"{path}: IDX magic 0x{got_magic:08x}, expected 0x{magic:08x}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = (count, *shape_tail)
    if dims != expected:
        raise DatasetFormatError(f"{path}: IDX shape {dims}, expected {expected}")
    body = np.frombuffer(raw, dtype=np.uint8, offset=header_len)
    if body.size != int(np.prod(expected)):
        raise DatasetFormatError(f"{path}: {body.size} data bytes, expected {int(np.prod(expected))}")
    return body.reshape(expected)


def load_split(split: str, path: str | os.PathLike | None = None) -> Split:
    """Read one split ('train' or 'test'); raises a clear error naming the Debian package."""
    if split not in _FILES:
        raise ValueError(f"unknown Fashion-MNIST split {split!r}; expected one of {sorted(_FILES)}")
    root = data_dir(path)
    images_name, labels_name, count = _FILES[split]
    missing = [n for n in (images_name, labels_name) if not (root / n).is_file()]
    if missing:
        raise DatasetMissingError(
            f"Fashion-MNIST {split} files not found in {root} (missing: {', '.join(missing)}). "
            f"Install the Debian package with `apt-get install {DEBIAN_PACKAGE}` "
            f"(it provides {DEFAULT_DIR}), or point ${DATA_DIR_ENV} at a directory holding the "
            f"original gzipped IDX files.")
    images = _read_idx(root / images_name, _IMAGES_MAGIC, (28, 28), count)
    labels = _read_idx(root / labels_name, _LABELS_MAGIC, (), count)
    if labels.max() >= len(CLASS_NAMES):
        raise DatasetFormatError(f"{root / labels_name}: label {labels.max()} out of range "
                                 f"0..{len(CLASS_NAMES) - 1}")
    return Split(split, images, labels)


@functools.lru_cache(maxsize=4)
def _cached(split: str, root: str) -> Split:
    return load_split(split, root)


def cached_split(split: str, path: str | os.PathLike | None = None) -> Split:
    """`load_split`, read once per process: the scene generator calls this on every batch."""
    return _cached(split, str(data_dir(path)))
