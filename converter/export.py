"""Keras model -> TFLite flatbuffer (batch fixed at 1, builtin ops only); heads or tails -> one
flatbuffer with a signature each."""
from __future__ import annotations

import tempfile
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from converter.compact import short_tensor_names
from splitinfer.litert import SIGNATURE_INPUT, SIGNATURE_OUTPUT
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
    return short_tensor_names(flatbuffer)


def tails_to_tflite(tails: Mapping[str, tuple[Any, tuple[int, ...]]], variables: Iterable[Any]) -> bytes:
    """Every tail in one float32 TFLite model, one signature per key, batch dimension free.

    Why one file: the tails of one model share its later layers, and the TFLite converter keeps
    one copy of a weight that several signatures read. Measured on the default model, four
    tails took 5.5 MB together against 20.9 MB as four files. `tails` maps a signature key
    to (tail model, activation shape). The tails must be built on the layers of one model, whose
    `variables` are passed so that the SavedModel the converter reads tracks them.
    """
    return signatures_to_tflite(tails, variables, batch=None, what="the tails")


def heads_to_tflite(heads: Mapping[str, tuple[Any, tuple[int, ...]]], variables: Iterable[Any]) -> bytes:
    """Every head in one float32 TFLite model, one signature per key, batch fixed at 1 (XNNPACK
    needs static shapes). Heads share the model's early layers as tails share its late ones:
    the default model's 11 heads take 5.5 MB in one file against 12 MB as files of their own, and
    run as fast (measured within 5%, 1 and 2 threads). `heads` maps a key to (head model, input
    shape)."""
    return signatures_to_tflite(heads, variables, batch=1, what="the heads")


def signatures_to_tflite(models: Mapping[str, tuple[Any, tuple[int, ...]]], variables: Iterable[Any], *,
                         batch: int | None, what: str) -> bytes:
    """Models built on the layers of one model, as the signatures of one TFLite file (input
    SIGNATURE_INPUT, output SIGNATURE_OUTPUT), with each weight stored once."""
    tf = import_tensorflow()
    module = tf.Module()
    module.weights = [getattr(v, "value", v) if not isinstance(v, tf.Variable) else v for v in variables]
    signatures = {}
    for key, (model, shape) in models.items():
        spec = tf.TensorSpec([batch, *shape], tf.float32, name=SIGNATURE_INPUT)
        signatures[key] = _signature_function(model, spec).get_concrete_function()
    with tempfile.TemporaryDirectory(prefix="signatures-savedmodel-") as saved:
        with native_output_captured() as log:
            try:
                tf.saved_model.save(module, saved, signatures=signatures)
                converter = tf.lite.TFLiteConverter.from_saved_model(saved, signature_keys=list(signatures))
                converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
                flatbuffer = converter.convert()
            except Exception as e:  # the converter raises many types; one message is enough
                detail = "".join(log)[-2000:]
                raise ExportError(f"TFLite conversion of {what} failed: {type(e).__name__}: "
                                  f"{str(e)[:500]}\n{detail}") from e
    return short_tensor_names(flatbuffer)


def _signature_function(model: Any, spec: Any) -> Any:
    tf = import_tensorflow()
    return tf.function(lambda x: {SIGNATURE_OUTPUT: model(x, training=False)}, input_signature=[spec],
                       autograph=False)
