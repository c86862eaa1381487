"""The LiteRT interpreter, whichever package provides it, with XNNPACK and explicit threads.

Preference: `ai_edge_litert` (the maintained runtime), then `tflite_runtime` (older boards), then
`tensorflow.lite` (development machines only). TensorFlow is never imported unless both runtime
packages are missing.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Any, Callable

from splitinfer.quiet import native_output_captured

RUNTIMES = ("ai_edge_litert.interpreter", "tflite_runtime.interpreter", "tensorflow.lite")


@dataclass(frozen=True)
class RuntimeInfo:
    package: str
    delegate: str
    num_threads: int


#: Names of the one input and one output of every signature in a bundle's heads.tflite and
#: tails.tflite.
SIGNATURE_INPUT, SIGNATURE_OUTPUT = "x", "y"


def default_num_threads() -> int:
    """All cores this process may use: LiteRT itself defaults to one thread."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def interpreter_class() -> tuple[type, str]:
    errors = []
    for module_name in RUNTIMES:
        try:
            module = importlib.import_module(module_name)
            return module.Interpreter, module_name.split(".")[0]
        except Exception as e:  # an ImportError, or tflite_runtime's numpy-2 crash
            errors.append(f"{module_name}: {type(e).__name__}: {e}")
    raise ImportError(
        "No TFLite interpreter found. Install ai-edge-litert (pip install ai-edge-litert). "
        "Tried: " + "; ".join(errors)
    )


def load_interpreter(
    model_path: str | os.PathLike | None = None,
    *,
    model_content: bytes | None = None,
    num_threads: int | None = None,
) -> tuple[Any, RuntimeInfo]:
    """An allocated interpreter for one .tflite model, on XNNPACK (the default delegate)."""
    if (model_path is None) == (model_content is None):
        raise ValueError("Pass exactly one of model_path or model_content.")
    threads = default_num_threads() if num_threads is None else int(num_threads)
    if threads < 1:
        raise ValueError(f"Expected num_threads >= 1. Received: num_threads={num_threads}")
    cls, package = interpreter_class()
    kwargs: dict[str, Any] = {"num_threads": threads}
    if model_path is not None:
        kwargs["model_path"] = os.fspath(model_path)
    else:
        kwargs["model_content"] = model_content
    try:
        with native_output_captured():  # LiteRT announces every delegate it creates
            interpreter = cls(**kwargs)
            interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as e:
        where = model_path if model_path is not None else "model_content"
        raise ValueError(f"Not a loadable TFLite model ({where}): {e}") from e
    return interpreter, RuntimeInfo(package=package, delegate="XNNPACK", num_threads=threads)


def run_once(interpreter: Any, x: Any) -> Any:
    """Run one input through an allocated single-input, single-output interpreter."""
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    interpreter.set_tensor(inp["index"], x)
    interpreter.invoke()
    return interpreter.get_tensor(out["index"])


def run_tail(runner: Any, x: Any) -> Any:
    """Run a batch through one signature of a bundle's tails.tflite. The runner resizes its
    input when the batch size changed (XNNPACK needs the shapes static, and a resize makes them
    so); callers that pad to a few batch sizes keep one interpreter per size, so it never does."""
    return runner(**{SIGNATURE_INPUT: x})[SIGNATURE_OUTPUT]


def head_runner(interpreter: Any, signature: str | None = None) -> Callable[[Any], Any]:
    """A function running one batch-1 input through a head: the interpreter's only model, or the
    signature `signature` of a bundle's heads.tflite. The answer is a copy, so the next call
    cannot overwrite what the caller holds."""
    if signature is None:
        inp = interpreter.get_input_details()[0]["index"]
        out = interpreter.get_output_details()[0]["index"]

        def run(x: Any) -> Any:
            interpreter.set_tensor(inp, x)
            interpreter.invoke()
            return interpreter.get_tensor(out)

        return run
    try:
        runner = interpreter.get_signature_runner(signature)
    except ValueError as e:
        raise ValueError(f"The heads file has no signature {signature!r}: {e}") from e
    return lambda x: runner(**{SIGNATURE_INPUT: x})[SIGNATURE_OUTPUT]


class HeadFiles:
    """Heads by (file, signature), with one interpreter per file: a bundle's heads share one
    heads.tflite, and loading it once per head would delegate every head's weights each time.
    Not thread-safe, like the interpreters: one per thread."""

    def __init__(self, num_threads: int | None = None) -> None:
        self.num_threads = num_threads
        self._interpreters: dict[str, tuple[Any, RuntimeInfo]] = {}

    def head(self, path: str | os.PathLike, signature: str | None = None) -> Callable[[Any], Any]:
        return head_runner(self.interpreter(path)[0], signature)

    def interpreter(self, path: str | os.PathLike) -> tuple[Any, RuntimeInfo]:
        key = os.fspath(path)
        if key not in self._interpreters:
            self._interpreters[key] = load_interpreter(key, num_threads=self.num_threads)
        return self._interpreters[key]
