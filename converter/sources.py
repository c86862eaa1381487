"""Turn a SOURCE argument (a .keras/.h5 file or zoo:NAME) into a Keras model and its hash."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splitinfer.errors import SplitInferError

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")


class SourceError(SplitInferError, ValueError):
    """The model source cannot be read."""


@dataclass
class Source:
    model: Any
    name: str
    sha256: str
    labels: tuple[str, ...] = ()


def load_source(spec: str, *, weights: str | None = None, input_shape=None) -> Source:
    """Load `spec`; cheap checks (paths, suffixes, names) come before any TensorFlow work."""
    if spec.startswith("zoo:"):
        return _load_zoo(spec[4:], weights, input_shape)
    path = Path(spec)
    if not path.exists():
        raise SourceError(f"Model file not found: {spec}. Pass a .keras/.h5 file or zoo:NAME.")
    if path.is_dir() or path.suffix.lower() not in MODEL_SUFFIXES:
        raise SourceError(
            f"Expected a file ending in one of {MODEL_SUFFIXES} or zoo:NAME. Received: {spec}"
        )
    if weights is not None:
        _check_weights_path(weights)
    _check_container(path, spec)
    from splitinfer.quiet import import_tensorflow

    import_tensorflow()
    import keras

    try:
        model = keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as e:  # keras raises ValueError, OSError, zipfile errors, TypeError ...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise SourceError(f"Cannot load {spec} as a Keras model: {first[:300]}") from e
    if weights is not None:
        _load_weights(model, weights)
    digest = _sha256(path) if weights is None else _sha256_many([path, Path(weights)])
    return Source(model=model, name=path.stem, sha256=digest)


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _check_container(path: Path, spec: str) -> None:
    """A truncated or foreign file, named before Keras reports it misleadingly ("File not found")."""
    import zipfile

    if path.suffix.lower() == ".keras" and not zipfile.is_zipfile(path):
        raise SourceError(f"Cannot load {spec}: not a .keras archive (a zip file); it is truncated "
                          "or was not written by model.save(). Save the model again.")
    if path.suffix.lower() in (".h5", ".hdf5"):
        with path.open("rb") as f:
            start = f.read(2048 + len(HDF5_SIGNATURE))
        if not any(start[o:o + len(HDF5_SIGNATURE)] == HDF5_SIGNATURE for o in (0, 512, 1024, 2048)):
            raise SourceError(f"Cannot load {spec}: not an HDF5 file; it is truncated or was "
                              "not written by model.save(). Save the model again.")


def _load_zoo(name: str, weights: str | None, input_shape) -> Source:
    from models import zoo

    if name not in zoo.ZOO:
        raise SourceError(f"Unknown zoo model. Expected one of {sorted(zoo.ZOO)}. Received: zoo:{name}")
    if weights is not None:
        _check_weights_path(weights)
    from splitinfer.quiet import import_tensorflow

    import_tensorflow()
    import keras

    keras.utils.set_random_seed(0)  # untrained zoo models are reproducible
    try:
        model = zoo.build(name, input_shape)
    except (FileNotFoundError, ValueError) as e:
        raise SourceError(f"Cannot build zoo:{name}: {e}") from e
    if weights is not None:
        _load_weights(model, weights)
    labels = tuple(getattr(model, "class_names", ()) or zoo.labels(name))
    return Source(model=model, name=name, sha256=weights_sha256(model), labels=labels)


def _check_weights_path(weights: str) -> None:
    if not Path(weights).is_file():
        raise SourceError(f"Weights file not found: {weights}")


def _load_weights(model, weights: str) -> None:
    try:
        model.load_weights(weights)
    except Exception as e:
        raise SourceError(f"Cannot load weights {weights} into {model.name}: {str(e)[:300]}") from e


def _sha256(path: Path) -> str:
    return _sha256_many([path])


def _sha256_many(paths) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def weights_sha256(model) -> str:
    """Identity of an in-memory model: its architecture name plus every weight's bytes."""
    import numpy as np

    h = hashlib.sha256(model.name.encode())
    for w in model.weights:
        h.update(np.ascontiguousarray(np.asarray(w), dtype=np.float32).tobytes())
    return h.hexdigest()
