"""TFLite tails on LiteRT with XNNPACK: the CPU cloud's backend.

Why: on a CPU, a small tail spends most of a TensorFlow call in framework overhead; the same
tail as TFLite runs several times faster (`python -m benchmarks.cloud_backends`). A bundle's
tails are one file, a signature per split, with a free batch dimension. XNNPACK needs static
shapes, so each file gets one interpreter per bucket size the service pads to
(`cloud_runtime.buckets`), and its signatures are resized once; an interpreter is not
thread-safe, so each has a lock.
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cloud_runtime.backend import LoadTiming, TailBackend, TailSpec


@dataclass
class _Slot:
    """One interpreter of a tails file at one batch size, and the signatures run on it."""

    interpreter: Any
    lock: threading.Lock = field(default_factory=threading.Lock)
    runners: dict[str, Any] = field(default_factory=dict)


class LiteRTTailBackend(TailBackend):
    name = "litert"

    def __init__(self, num_threads: int | None = None) -> None:
        self._num_threads = num_threads
        self._started = False
        self._info: dict[str, Any] = {}
        self._loaded: set[str] = set()
        self._slots: dict[tuple[str, int], _Slot] = {}
        self._slots_lock = threading.Lock()

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
        return tail.key in self._loaded

    def load(self, tail: TailSpec) -> LoadTiming:
        if not self._started:
            raise RuntimeError("LiteRTTailBackend.load before start(); call start() in the worker")
        if tail.tflite_signature is None or tail.tflite_path is None:
            raise RuntimeError(f"tail {tail.key} has no TFLite form: reconvert the bundle "
                               "(python -m converter) or serve it with --tail-backend tf")
        if tail.key in self._loaded:
            return LoadTiming(0.0, 0.0)
        if not os.path.isfile(tail.tflite_path):
            raise RuntimeError(f"tail {tail.key}: {tail.tflite_path} is missing")
        t0 = time.monotonic()
        self._slot(tail.tflite_path, 1)  # reads the file (mapped: interpreters share its pages)
        t1 = time.monotonic()
        self._run(tail, np.zeros((1, *tail.input_shape), np.float32))
        self._loaded.add(tail.key)
        return LoadTiming(load_s=t1 - t0, warmup_s=time.monotonic() - t1)

    def _slot(self, path: str, batch: int) -> _Slot:
        with self._slots_lock:
            slot = self._slots.get((path, batch))
            if slot is None:
                from splitinfer.litert import load_interpreter

                interpreter, _ = load_interpreter(path, num_threads=self._num_threads)
                slot = self._slots[(path, batch)] = _Slot(interpreter)
            return slot

    def run(self, tail: TailSpec, batch: np.ndarray) -> np.ndarray:
        if tail.key not in self._loaded:
            raise RuntimeError(f"tail {tail.key} is not loaded")
        return self._run(tail, batch)

    def _run(self, tail: TailSpec, batch: np.ndarray) -> np.ndarray:
        from splitinfer.litert import run_tail

        x = np.ascontiguousarray(batch, dtype=np.float32)
        slot = self._slot(tail.tflite_path, len(x))
        with slot.lock:
            runner = slot.runners.get(tail.tflite_signature)
            if runner is None:
                runner = slot.runners[tail.tflite_signature] = \
                    slot.interpreter.get_signature_runner(tail.tflite_signature)
            return np.array(run_tail(runner, x))  # a copy: the interpreter reuses its buffers

    def unload(self, tail: TailSpec) -> None:
        self._loaded.discard(tail.key)  # its interpreters are shared with the file's other tails

    def close(self) -> None:
        self._slots.clear()
        self._loaded.clear()
