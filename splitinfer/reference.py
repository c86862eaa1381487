"""The reference model that anchors emulated device classes.

A device class is defined by one published figure: how long a reference model takes on that
board. Timing the same model on the host, in the same run and at the same thread count as the
heads, turns any host time into the board's:

    board_ms = host_ms * class_reference_ms / host_reference_ms

so an emulated class gives the same milliseconds on a fast or a slow host, with 1 or 2 threads.
The reference is MobileNetV2 1.0 at 224x224, float32, batch 1: the most widely published mobile
CPU benchmark. Its weights do not matter for timing (dense float32 kernels), so it is built from
a fixed seed and cached; building it needs TensorFlow, running it only LiteRT.
"""
from __future__ import annotations

import os
from pathlib import Path

REFERENCE_NAME = "mobilenet_v2_1.0_224_float32"
REFERENCE_INPUT_SHAPE = (1, 224, 224, 3)
# FLOPs of the reference as converter/flops.py counts them (2 x ~300 M multiply-accumulates): lets a
# bundle without a measured device profile be emulated from its FLOPs, host-independently.
REFERENCE_FLOPS = 0.60e9


def cache_dir() -> Path:
    """$SPLITINFER_CACHE, else $XDG_CACHE_HOME/splitinfer, else ~/.cache/splitinfer."""
    explicit = os.environ.get("SPLITINFER_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "splitinfer"


def reference_model_path(build: bool = True) -> Path:
    """The cached reference .tflite; built with TensorFlow on first use when `build`."""
    path = cache_dir() / f"{REFERENCE_NAME}.tflite"
    if path.is_file() or not build:
        return path
    try:
        flatbuffer = _build_reference()
    except ImportError:
        raise RuntimeError(
            f"the reference model {path} is missing and TensorFlow is not installed to build it: "
            f"copy it from a machine that has run `python -m edge_runtime.profile`, or set "
            f"SPLITINFER_CACHE to a folder that holds it") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    tmp.write_bytes(flatbuffer)
    os.replace(tmp, path)  # atomic: concurrent profilers never read half a file
    return path


def _build_reference() -> bytes:
    from splitinfer.quiet import import_tensorflow, native_output_captured

    tf = import_tensorflow()
    import keras

    keras.utils.set_random_seed(0)
    model = keras.applications.MobileNetV2(weights=None, input_shape=REFERENCE_INPUT_SHAPE[1:])
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    with native_output_captured():
        return converter.convert()
