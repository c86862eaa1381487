"""The profiler's images: calibration, evaluation and verification sets that never overlap.

Why three sets: ranges, clipping and per-channel widths are *fitted* on the calibration images;
accuracy and bytes are *measured* on the evaluation images; `--verify` replays the profile's
claims on images neither of them saw. A figure measured on the images it was fitted on (or
chosen on) is optimistic, and the scheduler's accuracy SLO inherits that optimism.

The default model's sets are scenes (`models.scenes`): calibration from the 'val' split
(Fashion-MNIST train items 55000..), evaluation and verification from consecutive, disjoint index
ranges of the 'test' split. A user folder is split by file order: the first images calibrate, the
next ones evaluate, and verification takes files whose content (sha256) is in neither set.
"""
from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge_runtime.images import ImageError, list_images, load_image
from splitinfer.bundle.manifest import Manifest

DEFAULT_EVALUATION_IMAGES = 1000
DEFAULT_CALIBRATION_IMAGES = 128
#: In a user folder without enough images for both, calibration gets at most this share.
FOLDER_CALIBRATION_SHARE = 0.25


@dataclass
class Dataset:
    images: np.ndarray  # N x H x W x 3 float32, 0..255: the evaluation images
    labels: np.ndarray | None  # N int, or None when the images are unlabelled
    calibration: np.ndarray  # images the offline ranges and widths are fitted on (never evaluated)
    description: dict[str, Any]  # recorded as profile.json "dataset": where each set came from

    def first(self, n: int) -> "Dataset":
        """The first `n` evaluation images. The description still names every evaluation image
        loaded (`--verify` picks images outside all of them); its "n" becomes `n`."""
        if n >= len(self.images):
            return self
        labels = None if self.labels is None else self.labels[:n]
        return dataclasses.replace(self, images=self.images[:n], labels=labels,
                                   description={**self.description, "n": n})


def load_dataset(manifest: Manifest, data: str | Path | None, *, limit: int | None = None,
                 calibration: int = DEFAULT_CALIBRATION_IMAGES) -> Dataset:
    """Calibration and evaluation images: the default model's scenes, or a folder's images
    (labels from labels.csv)."""
    if data is None:
        _check_default(manifest)
        from models import scenes

        n = limit or DEFAULT_EVALUATION_IMAGES
        images, labels = scenes.make_scenes("test", np.arange(n))
        calib, _ = scenes.make_scenes("val", np.arange(calibration))
        return Dataset(images.astype(np.float32), np.asarray(labels), calib.astype(np.float32), {
            "source": f"models.scenes test 0..{n - 1}", "n": n,
            "evaluation": {"scenes": "test", "first": 0, "count": n},
            "calibration": {"scenes": "val", "first": 0, "count": calibration}})
    entries = list_images(data)
    if len(entries) < 2:
        raise ImageError(f"{data}: profiling needs at least 2 images (calibration and evaluation "
                         f"are disjoint); it has {len(entries)}.")
    k = min(calibration, max(1, int(len(entries) * FOLDER_CALIBRATION_SHARE)))
    hashes = {e.path: file_sha256(e.path) for e in entries}
    calib_entries = entries[:k]
    calib_hashes = {hashes[e.path] for e in calib_entries}
    # A copy of a calibration image under another name is not an unseen image.
    eval_entries = [e for e in entries[k:] if hashes[e.path] not in calib_hashes]
    if limit:
        eval_entries = eval_entries[:limit]
    if not eval_entries:
        raise ImageError(f"{data}: no image is left to evaluate on after the {k} calibration ones.")
    shape = manifest.model.input_shape
    images = np.stack([load_image(e.path, shape) for e in eval_entries])
    calib = np.stack([load_image(e.path, shape) for e in calib_entries])
    labelled = all(e.label is not None for e in eval_entries)
    labels = np.array([e.label for e in eval_entries]) if labelled else None
    return Dataset(images, labels, calib, {
        "source": str(data), "n": len(eval_entries), "labelled": labelled,
        "evaluation": {"folder": str(data), "sha256": [hashes[e.path] for e in eval_entries]},
        "calibration": {"folder": str(data), "sha256": sorted(calib_hashes)}})


def fresh_dataset(manifest: Manifest, description: dict[str, Any], data: str | Path | None,
                  count: int) -> Dataset:
    """`count` images outside the profile's calibration and evaluation sets (as recorded in its
    "dataset"), for `--verify`: the next test scenes, or files of `data` with other contents."""
    evaluation = description.get("evaluation") or {}
    calibration = description.get("calibration") or {}
    if data is None:
        _check_default(manifest)
        if evaluation.get("scenes") != "test":
            raise ValueError("The profile was not measured on the default scenes: pass --data DIR "
                             "with images it has not seen.")
        from models import scenes

        first = int(evaluation["first"]) + int(evaluation["count"])
        if calibration.get("scenes") == "test":  # not written by this profiler, but be safe
            first = max(first, int(calibration["first"]) + int(calibration["count"]))
        images, labels = scenes.make_scenes("test", np.arange(first, first + count))
        return Dataset(images.astype(np.float32), np.asarray(labels), images[:0].astype(np.float32),
                       {"source": f"models.scenes test {first}..{first + count - 1}", "n": count,
                        "evaluation": {"scenes": "test", "first": first, "count": count}})
    seen = set(evaluation.get("sha256", [])) | set(calibration.get("sha256", []))
    fresh = [e for e in list_images(data) if file_sha256(e.path) not in seen][:count]
    if not fresh:
        raise ImageError(f"{data}: every image was used to calibrate or evaluate the profile; "
                         "verification needs images it has not seen.")
    images = np.stack([load_image(e.path, manifest.model.input_shape) for e in fresh])
    labelled = all(e.label is not None for e in fresh)
    return Dataset(images, np.array([e.label for e in fresh]) if labelled else None, images[:0],
                   {"source": str(data), "n": len(fresh), "labelled": labelled})


def overlap(description: dict[str, Any]) -> int:
    """How many images a profile's "dataset" lists in both calibration and evaluation (0 for a
    correct profile; scene ranges of different splits never overlap)."""
    evaluation = description.get("evaluation") or {}
    calibration = description.get("calibration") or {}
    if "sha256" in evaluation or "sha256" in calibration:
        return len(set(evaluation.get("sha256", [])) & set(calibration.get("sha256", [])))
    if evaluation.get("scenes") != calibration.get("scenes"):
        return 0
    e0, e1 = int(evaluation["first"]), int(evaluation["first"]) + int(evaluation["count"])
    c0, c1 = int(calibration["first"]), int(calibration["first"]) + int(calibration["count"])
    return max(0, min(e1, c1) - max(e0, c0))


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _check_default(manifest: Manifest) -> None:
    from models.zoo import TRAINED

    if manifest.model.name not in TRAINED:
        raise ValueError(
            f"Model {manifest.model.name!r} has no default data set: pass --data DIR with "
            "images (and a labels.csv of file,label rows for accuracy).")


def array_dataset(images: np.ndarray, labels: np.ndarray | None,
                  calibration: np.ndarray | None = None,
                  max_calibration: int = DEFAULT_CALIBRATION_IMAGES) -> Dataset:
    """A dataset of in-memory images (the Python API): without `calibration`, the first images
    (at most a quarter) calibrate and the rest evaluate; images are recorded by the sha256 of
    their float32 pixels."""
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"Expected images of shape (N, H, W, C). Received: shape={images.shape}")
    labels = None if labels is None else np.asarray(labels)
    if calibration is None:
        if len(images) < 2:
            raise ValueError("Expected at least 2 images (calibration and evaluation are disjoint), "
                             "or calibration= images of their own.")
        k = min(max_calibration, max(1, int(len(images) * FOLDER_CALIBRATION_SHARE)))
        calibration, images = images[:k], images[k:]
        labels = None if labels is None else labels[k:]
    calibration = np.asarray(calibration, dtype=np.float32)

    def digests(x: np.ndarray) -> list[str]:
        return [hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest() for a in x]

    calib_hashes = set(digests(calibration))
    keep = np.array([h not in calib_hashes for h in digests(images)])
    images = images[keep]
    labels = None if labels is None else labels[keep]
    if not len(images):
        raise ValueError("Every evaluation image is also a calibration image.")
    return Dataset(images, labels, calibration, {
        "source": "splitinfer.profile(images)", "n": len(images), "labelled": labels is not None,
        "evaluation": {"sha256": digests(images)}, "calibration": {"sha256": sorted(calib_hashes)}})
