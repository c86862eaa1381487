"""TFLite tails on LiteRT with XNNPACK: the CPU cloud's backend.

Why: on a CPU, a small tail spends most of a TensorFlow call in framework overhead; the same
tail as TFLite runs several times faster (`python -m benchmarks.cloud_backends`). The converter
writes each tail with a free batch dimension; XNNPACK needs static shapes, so each tail gets one
interpreter per bucket size the service pads to (`cloud_runtime.buckets`), resized once, and a
lock, because an interpreter is not thread-safe.
"""
from __future__ import annotations

import threading
import time
from typing import Any

import numpy as np

from cloud_runtime.backend import LoadTiming, TailBackend, TailSpec


class LiteRTTailBackend(TailBackend):
    name = "litert"

    def __init__(self, num_threads: int | None = None) -> None:
        self._num_threads = num_threads
        self._started = False
        self._info: dict[str, Any] = {}
        self._models: dict[str, bytes] = {}
        self._interpreters: dict[tuple[str, int], Any] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._load_lock = threading.Lock()

    def start(self) -> None:
        if self._started:
            return
        from splitinfer.litert import default_num_threads, interpreter_class

        _, package = interpreter_class()
        threads = self._num_threads or default_num_threads()
        self._num_threads = threads
        self._info = {"framework": package, "delegate": "XNNPACK", "threads": threads, "gpus": 0}
        self._started = True

    @property
    def device(self) -> str | None:
        return "/CPU:0" if self._started else None

    def device_info(self) -> dict:
        return dict(self._info)

    def is_loaded(self, tail: TailSpec) -> bool:
        return tail.key in self._models

    def load(self, tail: TailSpec) -> LoadTiming:
        if not self._started:
            raise RuntimeError("LiteRTTailBackend.load before start(); call start() in the worker")
        if tail.tflite_path is None:
            raise RuntimeError(f"tail {tail.key} has no TFLite file: reconvert the bundle "
                               "(python -m converter) or serve it with --tail-backend tf")
        with self._load_lock:
            if tail.key in self._models:
                return LoadTiming(0.0, 0.0)
            t0 = time.monotonic()
            with open(tail.tflite_path, "rb") as f:
                content = f.read()
            self._models[tail.key] = content
            self._locks[tail.key] = threading.Lock()
            t1 = time.monotonic()
            self.run(tail, np.zeros((1, *tail.input_shape), np.float32))
            return LoadTiming(load_s=t1 - t0, warmup_s=time.monotonic() - t1)

    def _interpreter(self, tail: TailSpec, batch: int):
        """The tail's interpreter for this batch size (built on first use; call under its lock)."""
        key = (tail.key, batch)
        interpreter = self._interpreters.get(key)
        if interpreter is None:
            from splitinfer.litert import load_interpreter, run_batch

            interpreter, _ = load_interpreter(model_content=self._models[tail.key],
                                              num_threads=self._num_threads)
            run_batch(interpreter, np.zeros((batch, *tail.input_shape), np.float32))  # resize once
            self._interpreters[key] = interpreter
        return interpreter

    def run(self, tail: TailSpec, batch: np.ndarray) -> np.ndarray:
        from splitinfer.litert import run_batch

        lock = self._locks.get(tail.key)
        if lock is None:
            raise RuntimeError(f"tail {tail.key} is not loaded")
        x = np.ascontiguousarray(batch, dtype=np.float32)
        with lock:
            return np.array(run_batch(self._interpreter(tail, len(x)), x))  # a copy: buffers are reused

    def close(self) -> None:
        self._interpreters.clear()
        self._models.clear()
