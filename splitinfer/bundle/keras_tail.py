"""Keras tails that share one copy of the model's weights.

A tail file (`tails/<split>.json.gz`) holds the tail's architecture only, as Keras' JSON config,
and names the bundle's model file; loading it copies each layer's weights from that model by layer
name (the converter builds every tail on the model's own layers, so the names match). Why: with
a `.keras` file per split, each carrying the weights after its cut, the default 12-split bundle
held 57 MB of tails for a 6 MB model. The configs repeat each layer's settings, so gzip takes them
from 3.5 MB to 80 kB at the default model's 49 cuts.

Bundles from before these formats (`tails/<split>.keras`, or an uncompressed `.json`) still
load. Keras is imported only when a tail is loaded, so the board and the scheduler never need it.
"""
from __future__ import annotations

import gzip
import json
import os
import threading
from pathlib import Path
from typing import Any

from splitinfer.errors import BundleError

TAIL_FORMAT = "splitinfer-keras-tail"
TAIL_VERSION = 1
TAIL_SUFFIX = ".json.gz"
MODEL_FILE = "model.keras"  # the bundle's Keras model, whose weights every tail file reads
_GZIP_MAGIC = b"\x1f\x8b"

_CACHED_MODELS = 4  # a cloud serving several bundles loads their tails in turns
_cache_lock = threading.Lock()
_weights_cache: dict[tuple[str, int, int], dict[str, list[Any]]] = {}


def tail_document(tail_model: Any | None, weights: str) -> dict[str, Any]:
    """What a tail file holds: the architecture of `tail_model` (None: the whole model, the
    cloud-only tail), and `weights`, the model file's path relative to the tail file."""
    config = None if tail_model is None else json.loads(tail_model.to_json())
    return {"format": TAIL_FORMAT, "version": TAIL_VERSION, "weights": weights, "config": config}


def write_tail_file(path: str | os.PathLike, document: dict[str, Any]) -> None:
    """Write a tail document gzip-compressed, with no timestamp, so one tail gives one file."""
    text = json.dumps(document, separators=(",", ":")).encode()
    Path(path).write_bytes(gzip.compress(text, compresslevel=9, mtime=0))


def read_tail_file(path: str | os.PathLike) -> Any:
    """The JSON document in a tail file, compressed or not."""
    data = Path(path).read_bytes()
    return json.loads(gzip.decompress(data) if data[:2] == _GZIP_MAGIC else data)


def load_keras_tail(path: str | os.PathLike) -> Any:
    """The Keras tail at `path`, with its weights (a `.keras` file, or a tail file)."""
    path = Path(path)
    import keras

    if path.suffix == ".keras":
        return keras.models.load_model(path, compile=False)
    try:
        doc = read_tail_file(path)
    except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError, ValueError) as e:
        raise BundleError(f"Cannot read the tail file {path}: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != TAIL_FORMAT:
        raise BundleError(f"{path} is not a tail file (expected format {TAIL_FORMAT!r}).")
    if doc.get("version") != TAIL_VERSION:
        raise BundleError(f"Tail file {path} has version {doc.get('version')!r}; this build reads "
                          f"version {TAIL_VERSION}. Re-run the converter to rebuild the bundle.")
    model_path = path.parent / str(doc["weights"])
    if doc.get("config") is None:  # the whole model
        _model_version(model_path)
        return _load_model(model_path)
    weights = layer_weights(model_path)
    tail = keras.models.model_from_json(json.dumps(doc["config"]))
    for layer in tail.layers:
        if not layer.weights:
            continue
        if layer.name not in weights:
            raise BundleError(f"Tail file {path} needs weights for layer {layer.name!r}, which the "
                              f"model {doc['weights']} does not have. Rebuild the bundle.")
        layer.set_weights(weights[layer.name])
    return tail


def layer_weights(model_path: Path) -> dict[str, list[Any]]:
    """Every layer's weights in the Keras model at `model_path`, as numpy arrays, read once per
    process and file version (a cloud loads a model's tails one by one)."""
    key = _model_version(model_path)
    with _cache_lock:
        if key not in _weights_cache:
            model = _load_model(model_path)
            while len(_weights_cache) >= _CACHED_MODELS:
                _weights_cache.pop(next(iter(_weights_cache)))
            _weights_cache[key] = {layer.name: layer.get_weights() for layer in model.layers if layer.weights}
        return _weights_cache[key]


def _model_version(model_path: Path) -> tuple[str, int, int]:
    """The model file's identity for the cache; a clear error when it is missing."""
    try:
        stat = model_path.stat()
    except OSError as e:
        raise BundleError(f"The bundle's Keras model {model_path} is missing: {e}. "
                          "Rebuild the bundle with python -m converter.") from e
    return str(model_path.resolve()), stat.st_mtime_ns, stat.st_size


def _load_model(model_path: Path) -> Any:
    import keras

    try:
        return keras.models.load_model(model_path, compile=False)
    except Exception as e:  # Keras raises many types for a damaged file; one line says which file
        raise BundleError(f"Cannot load the bundle's Keras model {model_path}: {type(e).__name__}: "
                          f"{str(e).splitlines()[0][:300] if str(e) else ''}. Rebuild the bundle.") from e
