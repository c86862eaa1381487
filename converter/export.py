"""Keras model -> TFLite flatbuffer (batch fixed at 1, builtin ops only)."""
from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np

from splitinfer.quiet import import_tensorflow, native_output_captured


class ExportError(RuntimeError):
    """The TFLite converter refused a piece of the model."""


def to_tflite(
    model: Any,
    input_shape: tuple[int, ...],
    *,
    representative: Callable[[], Iterable[np.ndarray]] | None = None,
    batch: int | None = 1,
) -> bytes:
    """Convert `model` to a float32 TFLite model with a static batch of 1.

    XNNPACK only takes static shapes, so the signature is fixed at [1, *input_shape] (heads).
    `batch=None` leaves the batch free (tails: the cloud resizes the input to each batch size
    it pads to, which makes the shapes static again before XNNPACK sees them). With
    `representative` (a callable yielding [1, *input_shape] float32 arrays), the weights and
    activations are post-training quantized to int8 while inputs and outputs stay float32, so the
    int8 head is a drop-in replacement for the float one.
    """
    tf = import_tensorflow()
    spec = tf.TensorSpec([batch, *input_shape], tf.float32, name="x")

    @tf.function(input_signature=[spec], autograph=False)
    def serve(x):
        return model(x, training=False)

    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2,
    )

    # Freeze the weights into constants: left as resource variables, the flatbuffer would read
    # uninitialised variables on the board (READ_VARIABLE ops).
    frozen = convert_variables_to_constants_v2(serve.get_concrete_function())
    converter = tf.lite.TFLiteConverter.from_concrete_functions([frozen])
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if representative is not None:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([x] for x in representative())
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.float32
        converter.inference_output_type = tf.float32
    with native_output_captured() as log:
        try:
            flatbuffer = converter.convert()
            error = None
        except Exception as e:  # the converter raises many types; one message is enough
            flatbuffer, error = None, e
    if error is not None:
        detail = "".join(log)[-2000:]
        raise ExportError(
            f"TFLite conversion failed for {getattr(model, 'name', 'model')}: "
            f"{type(error).__name__}: {str(error)[:500]}\n{detail}"
        ) from error
    return flatbuffer
