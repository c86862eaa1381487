"""In-process Keras tails on /GPU:0 when TensorFlow sees one, else on the CPU.

The only module of cloud_runtime that imports TensorFlow, and only in `start`, which the
service calls in the worker after gunicorn forks (TensorFlow is not fork-safe). Each tail gets
one `tf.function` with a batch-free input signature, so it is traced once whatever the batch
size; the service pads batches to a few bucket sizes so that kernels see few shapes.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from typing import Any

import numpy as np

from cloud_runtime.backend import LoadTiming, TailBackend, TailSpec
from splitinfer.bundle.keras_tail import load_keras_tail
from splitinfer.quiet import native_output_captured

log = logging.getLogger("cloud_runtime")


class KerasTailBackend(TailBackend):
    name = "tf"

    def __init__(self, num_threads: int | None = None) -> None:
        self._num_threads = num_threads  # intra-op threads; None: TensorFlow's default (all cores)
        self._tf: Any = None
        self._device: str | None = None
        self._info: dict = {}
        self._fns: dict[str, Any] = {}
        self._models: dict[str, Any] = {}
        self._load_lock = threading.Lock()  # Keras model loading is not thread-safe

    def start(self) -> None:
        if self._tf is not None:
            return
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        with native_output_captured():
            import keras  # noqa: F401  (Keras 3 registers its layers on import)
            import tensorflow as tf
        tf.get_logger().setLevel(logging.ERROR)
        if self._num_threads:
            tf.config.threading.set_intra_op_parallelism_threads(self._num_threads)
        gpus = tf.config.list_physical_devices("GPU")
        for gpu in gpus:  # several workers share one GPU: do not grab all its memory
            try:
                tf.config.experimental.set_memory_growth(gpu, True)
            except (RuntimeError, ValueError) as e:
                log.warning("could not enable memory growth on %s: %s", gpu.name, e)
        self._device = "/GPU:0" if gpus else "/CPU:0"
        info: dict[str, Any] = {"framework": f"tensorflow {tf.__version__}", "gpus": len(gpus)}
        if gpus:
            try:
                info["gpu_name"] = tf.config.experimental.get_device_details(gpus[0]).get("device_name")
            except Exception:  # details are a nicety
                pass
        self._info = info
        self._tf = tf

    @property
    def device(self) -> str | None:
        return self._device

    def device_info(self) -> dict:
        return dict(self._info)

    def is_loaded(self, tail: TailSpec) -> bool:
        return tail.key in self._fns

    def load(self, tail: TailSpec) -> LoadTiming:
        if self._tf is None:
            raise RuntimeError("KerasTailBackend.load before start(); call start() in the worker")
        with self._load_lock:
            if tail.key in self._fns:
                return LoadTiming(0.0, 0.0)
            tf = self._tf
            t0 = time.monotonic()
            with tf.device(self._device):
                model = load_keras_tail(tail.path)
                spec = tf.TensorSpec((None, *tail.input_shape), tf.float32)
                t1 = time.monotonic()
                # Traced once, here, not per request or batch size; the concrete function skips
                # tf.function's per-call signature matching.
                fn = tf.function(lambda x: model(x, training=False)).get_concrete_function(spec)
                fn(tf.zeros((1, *tail.input_shape), tf.float32))
            t2 = time.monotonic()
            self._models[tail.key] = model  # the concrete function does not own the variables
            self._fns[tail.key] = fn
            return LoadTiming(load_s=t1 - t0, warmup_s=t2 - t1)

    def run(self, tail: TailSpec, batch: np.ndarray) -> np.ndarray:
        fn = self._fns.get(tail.key)
        if fn is None:
            raise RuntimeError(f"tail {tail.key} is not loaded")
        with self._tf.device(self._device):
            out = fn(self._tf.constant(batch))
        return out.numpy()

    def unload(self, tail: TailSpec) -> None:
        with self._load_lock:
            self._fns.pop(tail.key, None)
            self._models.pop(tail.key, None)

    def close(self) -> None:
        self._fns.clear()
        self._models.clear()
