"""The tail-execution interface the HTTP layer talks to, and the factory that picks one.

This module imports no TensorFlow: the in-process Keras backend (tf_backend.py) is imported by
`make_backend` inside the worker, after gunicorn forks. A TensorFlow Serving or Ray Serve backend
implements the same four methods and replaces it without touching the views or the batcher.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TailSpec:
    """One servable tail: enough for any backend to find, load and feed it."""

    model: str
    model_sha256: str
    split: str
    path: str  # absolute path of tails/<split>.keras
    input_shape: tuple[int, ...]  # without the batch dimension

    @property
    def key(self) -> str:
        """Unique across served models (two versions of one model name may be served)."""
        return f"{self.model}@{self.model_sha256[:12]}/{self.split}"


@dataclass(frozen=True)
class LoadTiming:
    load_s: float  # reading the file and building the model
    warmup_s: float  # first call (tracing), batch 1


class TailBackend(abc.ABC):
    """Runs tails on float32 batches. Thread-safe: batchers of different tails call it at once."""

    name = "abstract"

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

    def device_info(self) -> dict:
        """Extra facts about the device for /v1/models (GPU name, framework version)."""
        return {}

    def close(self) -> None:
        """Release what `start` and `load` took (optional)."""


def make_backend(name: str) -> TailBackend:
    """The backend named in the config; its framework is imported here, in the worker."""
    if name == "keras":
        from cloud_runtime.tf_backend import KerasTailBackend

        return KerasTailBackend()
    raise ValueError(f"Unknown backend {name!r}. Expected one of ('keras',).")
