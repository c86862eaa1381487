"""The tail-execution interface the HTTP layer talks to, and the factory that picks one.

This module imports no TensorFlow: the in-process Keras backend (tf_backend.py) is imported by
`make_backend` inside the worker, after gunicorn forks. A TensorFlow Serving or Ray Serve backend
implements the same four methods and replaces it without touching the views or the batcher.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np

from cloud_runtime.load import LoadReport


@dataclass(frozen=True)
class TailSpec:
    """One servable tail: enough for any backend to find, load and feed it."""

    model: str
    model_sha256: str
    split: str
    path: str  # absolute path of the Keras tail (tails/<split>.json.gz; .json or .keras in older bundles)
    input_shape: tuple[int, ...]  # without the batch dimension
    tflite_path: str | None = None  # absolute path of the bundle's tails.tflite, when it has one
    tflite_signature: str | None = None  # this tail's signature in it (None: no TFLite tail)

    @property
    def key(self) -> str:
        """Unique across served models (two versions of one model name may be served)."""
        return f"{self.model}@{self.model_sha256[:12]}/{self.split}"


@dataclass(frozen=True)
class LoadTiming:
    load_s: float  # reading the file and building the model
    warmup_s: float  # first call (tracing), batch 1


@dataclass(frozen=True)
class RemoteRun:
    """One input's answer from a backend that batches across callers itself (Ray Serve)."""

    value: np.ndarray
    queue_s: float  # from arrival at the replica to the start of its batch
    run_s: float  # the batch's duration
    batch_size: int
    batch_id: str  # shared by the inputs of one batch, so each batch is counted once
    replica: str  # which replica ran it: "<node id prefix>:<pid>"
    load: LoadReport | None = None  # the load of the replica that ran it, as it answered


class TailBackend(abc.ABC):
    """Runs tails on float32 batches. Thread-safe: batchers of different tails call it at once.

    A backend that batches across callers itself (`batches_itself`, e.g. replicas behind Ray
    Serve) gets single inputs through `run_one` instead, and the service keeps no batcher.
    """

    name = "abstract"
    chosen_because = "given"  # why this backend serves (`choose_backend`), for /v1/models and logs
    engine = "in-process"  # where tails run: in this worker, or "ray" replicas
    batches_itself = False

    @abc.abstractmethod
    def start(self) -> None:
        """Heavy one-time initialisation (framework import, device discovery). After fork only."""

    @property
    @abc.abstractmethod
    def device(self) -> str | None:
        """Where tails run, e.g. '/GPU:0' or '/CPU:0'; None before `start`."""

    @abc.abstractmethod
    def load(self, tail: TailSpec) -> LoadTiming:
        """Make `tail` runnable; idempotent (a second call costs nothing and returns zeros)."""

    @abc.abstractmethod
    def is_loaded(self, tail: TailSpec) -> bool: ...

    @abc.abstractmethod
    def run(self, tail: TailSpec, batch: np.ndarray) -> np.ndarray:
        """(B, *input_shape) float32 -> (B, *output_shape); B is one of the bucket sizes."""

    def run_one(self, tail: TailSpec, x: np.ndarray, timeout_s: float) -> RemoteRun:
        """One (*input_shape) input -> its output; only where `batches_itself`.
        Raises TimeoutError when no answer came within `timeout_s`."""
        raise NotImplementedError(f"{type(self).__name__} batches in the service: call run()")

    def unload(self, tail: TailSpec) -> None:
        """Forget `tail` (a replica evicting it for another); reloading it must work."""

    def device_info(self) -> dict:
        """Extra facts about the device for /v1/models (GPU name, framework version)."""
        return {}

    def close(self) -> None:
        """Release what `start` and `load` took (optional)."""


def gpu_present() -> bool:
    """An NVIDIA device node this process may use, found without importing TensorFlow."""
    import glob
    import os

    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    return bool(glob.glob("/dev/nvidia[0-9]*"))


def choose_backend(name: str, tails: list[TailSpec], gpu: bool | None = None) -> tuple[str, str]:
    """(backend, why) for `--tail-backend NAME`: `auto` is TensorFlow on a GPU, LiteRT on a CPU
    when every tail has a TFLite file, else TensorFlow."""
    if name in ("tf", "keras"):
        return "tf", "asked for"
    if name == "litert":
        missing = [t.key for t in tails if t.tflite_signature is None]
        if missing:
            raise ValueError(f"--tail-backend litert needs TFLite tails; {missing[0]} has none: "
                             "reconvert the bundle (python -m converter) or use --tail-backend tf")
        return "litert", "asked for"
    if name != "auto":
        raise ValueError(f"Unknown tail backend {name!r}. Expected one of ('auto', 'litert', 'tf').")
    if gpu_present() if gpu is None else gpu:
        return "tf", "auto: a GPU is present"
    if any(t.tflite_signature is None for t in tails):
        return "tf", "auto: no GPU, but some tails have no TFLite form"
    return "litert", "auto: no GPU, every tail has a TFLite form"


def make_backend(name: str, tails: list[TailSpec] = (), num_threads: int | None = None) -> TailBackend:
    """The backend named in the config (`choose_backend`); its framework is imported in the
    worker, by `start`. `num_threads=None` uses every core the process may."""
    chosen, why = choose_backend(name, list(tails))
    if chosen == "litert":
        from cloud_runtime.litert_backend import LiteRTTailBackend

        backend: TailBackend = LiteRTTailBackend(num_threads)
    else:
        from cloud_runtime.tf_backend import KerasTailBackend

        backend = KerasTailBackend(num_threads)
    backend.chosen_because = why
    return backend
