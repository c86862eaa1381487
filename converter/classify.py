"""What classifies at a split for the profiler: a TFLite tail on LiteRT (what a CPU cloud
serves, several times faster there) or the Keras tail through a traced tf.function, answering
top-1 classes; and their batch-1 latency, which the scheduler's cloud classes scale."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from splitinfer.errors import BundleError
from splitinfer.litert import load_interpreter, run_tail
from splitinfer.quiet import import_tensorflow

TAIL_BACKENDS = ("auto", "litert", "tf")
TAIL_BATCH_VALUES = 1 << 20  # `tail_batch`


def predict(model, images: np.ndarray, batch: int) -> np.ndarray:
    return np.concatenate([classify_top1(model, images[i:i + batch]) for i in range(0, len(images), batch)])


_COMPILED: list = []  # [(model, compiled fn)]: one model at a time, the profiler walks splits in order


def resolve_backend(manifest, backend: str = "auto") -> str:
    """`litert` or `tf` for the whole bundle: `auto` is LiteRT when every split has a TFLite
    tail (one backend for all, so that every tail_ms is on the same footing)."""
    if backend not in TAIL_BACKENDS:
        raise ValueError(f"Expected a tail backend in {TAIL_BACKENDS}. Received: {backend!r}")
    missing = manifest.splits_without_tflite_tail
    if backend == "litert" and missing:
        raise BundleError(f"split {missing[0]!r} has no TFLite tail: reconvert the bundle "
                          "(python -m converter) or pass --tail-backend tf")
    if backend == "auto":
        return "tf" if missing else "litert"
    return backend


def classifier(bundle: Path, manifest, split, keras_tail: Callable[[Any], Any], backend: str):
    """What classifies at `split` for a resolved backend (`resolve_backend`): its TFLite tail on
    LiteRT (several times faster on a CPU, and what a CPU cloud serves), or its Keras tail
    (`keras_tail(split)` loads it)."""
    if backend == "tf":
        return keras_tail(split)
    return LiteTail(_tails_interpreter(bundle / manifest.tails_tflite), split.tail_signature,
                    batch=tail_batch(split.shape))


_TAILS_INTERPRETER: dict[str, Any] = {}  # one bundle's tails.tflite at a time


def _tails_interpreter(path: Path):
    key = f"{path.resolve()}:{path.stat().st_mtime_ns}"
    if key not in _TAILS_INTERPRETER:
        _TAILS_INTERPRETER.clear()
        _TAILS_INTERPRETER[key] = load_interpreter(path)[0]
    return _TAILS_INTERPRETER[key]


def tail_batch(shape: Sequence[int]) -> int:
    """Images per TFLite tail call: about TAIL_BATCH_VALUES input values, from 1 to 16.
    Measured on the default model's tails (XNNPACK, 2 threads, 1,700 rows a split), batches of
    about 16 run fastest at every split: at 80x80x16, 1.30 ms a row at batch 1, 1.11 at 16 and
    1.32 at 64 (a batch of 64 wide activations no longer fits the caches); at 10x10x48, 0.76
    at batch 1 and 0.46 at 16."""
    return int(np.clip(TAIL_BATCH_VALUES // max(int(np.prod(shape)), 1), 1, 16))


class LiteTail:
    """One split's TFLite tail that answers top-1 classes, in batches of at most `batch`."""

    backend = "litert"

    def __init__(self, interpreter, signature: str, batch: int = 50):
        self.runner = interpreter.get_signature_runner(signature)
        self.batch = batch

    def top1(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32)
        return np.concatenate([np.argmax(run_tail(self.runner, x[i:i + self.batch]), axis=-1)
                               for i in range(0, len(x), self.batch)])


def classify_top1(model, x: np.ndarray) -> np.ndarray:
    """Top-1 classes through a traced tf.function (eager Keras costs more than the math here)."""
    if isinstance(model, LiteTail):
        return model.top1(x)
    if not _COMPILED or _COMPILED[0][0] is not model:
        tf = import_tensorflow()
        spec = tf.TensorSpec([None, *model.inputs[0].shape[1:]], tf.float32)
        fn = tf.function(lambda t: tf.argmax(model(t, training=False), axis=-1), input_signature=[spec])
        _COMPILED[:] = [(model, fn)]
    return _COMPILED[0][1](x).numpy()


def tail_latency_ms(tail, one: np.ndarray, repeats: int = 10) -> float:
    """Batch-1 latency of the tail as a server runs it: a traced tf.function, not eager Keras
    (the profiler's own traced function: the top-1 it adds costs nothing next to the tail)."""
    for _ in range(3):  # trace and warm up
        classify_top1(tail, one)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        classify_top1(tail, one)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)
