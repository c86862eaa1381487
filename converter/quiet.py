"""Keep TensorFlow's and the TFLite converter's native logging off the user's terminal."""
from __future__ import annotations

import logging
import os

from edge_runtime.quiet import native_output_captured

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("ABSL_MIN_LOG_LEVEL", "3")


def import_tensorflow():
    """Import TensorFlow with its Python and native logs quieted; returns the module."""
    with native_output_captured():
        import tensorflow as tf  # noqa: F401
    tf.get_logger().setLevel(logging.ERROR)
    logging.getLogger("absl").setLevel(logging.ERROR)
    return tf


