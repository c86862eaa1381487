"""Keep native logs (TensorFlow, the TFLite converter, LiteRT) off the user's terminal:
capture what native code writes straight to file descriptors 1 and 2, and import TensorFlow
quietly."""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from typing import Iterator


@contextlib.contextmanager
def native_output_captured() -> Iterator[list[str]]:
    """Redirect file descriptors 1 and 2 (where C++ logs go) to a temp file for the block.

    The captured text is appended to the yielded list so a failure can still be explained.
    """
    captured: list[str] = []
    with tempfile.TemporaryFile(mode="w+b") as sink:
        saved = [os.dup(1), os.dup(2)]
        try:
            os.dup2(sink.fileno(), 1)
            os.dup2(sink.fileno(), 2)
            yield captured
        finally:
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            sink.seek(0)
            captured.append(sink.read().decode(errors="replace"))


def import_tensorflow():
    """Import TensorFlow with its Python and native logs quieted; returns the module."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")
    with native_output_captured():
        import tensorflow as tf  # noqa: F401
    tf.get_logger().setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
    return tf
