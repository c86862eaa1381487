"""Reading camera frames from image files: what the edge and the profiler feed the model.

Models take RGB pixels 0..255 as float32 with preprocessing inside the model, so loading an image
is only decoding and checking its size; nothing here rescales.
"""
from __future__ import annotations

import csv
import io
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from splitinfer.errors import SplitInferError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
LABELS_FILE = "labels.csv"


class ImageError(SplitInferError, ValueError):
    """An image cannot be decoded, or is not the size the model takes."""


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    label: int | None


def decode_image(data: bytes, expected_shape: tuple[int, ...] | None = None, *, what: str = "image") -> np.ndarray:
    """JPEG/PNG bytes -> float32 HxWxC array of 0..255 (C=3, or 1 for grey models), checked
    against `expected_shape`."""
    grey = expected_shape is not None and len(expected_shape) == 3 and expected_shape[-1] == 1
    with _opened(io.BytesIO(data), expected_shape, what) as img:
        try:
            pixels = np.asarray(img.convert("L" if grey else "RGB"), dtype=np.float32)
            return pixels[..., None] if grey else pixels
        except (OSError, SyntaxError, ValueError) as e:  # truncated or corrupt pixel data
            raise ImageError(f"{what}: not a readable image (JPEG or PNG expected: {e}).") from e


def check_image_file(path: str | Path, expected_shape: tuple[int, ...]) -> None:
    """Format and size from the header only: cheap enough to check a whole folder up front."""
    with _opened(path, expected_shape, str(path)):
        pass


@contextmanager
def _opened(source, expected_shape: tuple[int, ...] | None, what: str) -> Iterator:
    """An open PIL image whose format and size are checked before any pixel is decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        img = Image.open(source)
    except Image.DecompressionBombError as e:  # refused from the header, before decoding
        wanted = (f"the model takes {expected_shape[1]}x{expected_shape[0]} images; "
                  if expected_shape is not None else "")
        raise ImageError(f"{what}: {wanted}this one is too large to decode safely ({e})") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ImageError(f"{what}: not a readable image (JPEG or PNG expected: {e}).") from e
    with img:
        if img.format not in ("JPEG", "PNG"):
            raise ImageError(f"{what}: expected a JPEG or PNG image. Received: {img.format}.")
        width, height = img.size
        if expected_shape is not None and (height, width) != tuple(expected_shape[:2]):
            raise ImageError(
                f"{what}: the model takes {expected_shape[1]}x{expected_shape[0]} images. "
                f"Received: {width}x{height}. Resize it first."
            )
        yield img


def load_image(path: str | Path, expected_shape: tuple[int, ...] | None = None) -> np.ndarray:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageError(f"Cannot read image {path}: {e.strerror or e}") from e
    return decode_image(data, expected_shape, what=str(path))


def list_images(source: str | Path) -> list[LabelledImage]:
    """Images of a folder (sorted; labels from `labels.csv` when present) or one image file."""
    source = Path(source)
    if source.is_file():
        return [LabelledImage(source, None)]
    if not source.is_dir():
        raise ImageError(f"No such image file or folder: {source}")
    labels = read_labels(source / LABELS_FILE) if (source / LABELS_FILE).is_file() else {}
    files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise ImageError(f"No {'/'.join(IMAGE_SUFFIXES)} images in {source}.")
    return [LabelledImage(p, labels.get(p.name)) for p in files]


def read_labels(path: Path) -> dict[str, int]:
    """`file,label` rows -> {file name: integer label}."""
    out: dict[str, int] = {}
    with open(path, newline="") as f:
        for row_number, row in enumerate(csv.DictReader(f), start=2):
            try:
                out[Path(row["file"]).name] = int(row["label"])
            except (KeyError, TypeError, ValueError) as e:
                raise ImageError(
                    f"{path}:{row_number}: expected columns file,label with an integer label."
                ) from e
    return out


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """The cloud-only payload: the frame as JPEG."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()
