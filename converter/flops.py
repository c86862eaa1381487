"""Floating-point operation counts per layer, from shapes alone.

The scheduler needs a device-independent measure of where compute sits in the network (to spread
splits and to estimate latency on boards never measured). Counts are 2 x multiply-accumulates for
convolutions and dense layers, and one operation per output element for element-wise layers;
batch size 1.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

Shape = Sequence[int | None]


def layer_flops(operation: Any, input_shapes: Sequence[Shape], output_shapes: Sequence[Shape]) -> int:
    """FLOPs of one call of `operation` (a Keras layer or op) at batch 1."""
    kind = type(operation).__name__
    out = _size(output_shapes[0]) if output_shapes else 0
    if kind in ("Conv2D", "Conv1D", "Conv3D", "Conv2DTranspose"):
        kernel = math.prod(operation.kernel_size)
        cin = input_shapes[0][-1]
        groups = getattr(operation, "groups", 1) or 1
        return 2 * out * kernel * (cin // groups) + (out if operation.use_bias else 0)
    if kind in ("DepthwiseConv2D", "DepthwiseConv1D"):
        kernel = math.prod(operation.kernel_size)
        return 2 * out * kernel + (out if operation.use_bias else 0)
    if kind in ("SeparableConv2D", "SeparableConv1D"):
        kernel = math.prod(operation.kernel_size)
        cin = input_shapes[0][-1]
        spatial = _size(output_shapes[0][:-1])
        depthwise = 2 * spatial * kernel * cin * operation.depth_multiplier
        pointwise = 2 * out * cin * operation.depth_multiplier
        return depthwise + pointwise
    if kind == "Dense":
        return 2 * out * input_shapes[0][-1] + (out if operation.use_bias else 0)
    if kind in ("MaxPooling2D", "AveragePooling2D", "MaxPooling1D", "AveragePooling1D"):
        return out * math.prod(operation.pool_size)
    if kind.startswith("Global"):
        return _size(input_shapes[0])
    if kind in ("BatchNormalization", "LayerNormalization"):
        return 2 * out
    if kind in (
        "InputLayer", "Reshape", "Flatten", "ZeroPadding2D", "Cropping2D", "Dropout",
        "SpatialDropout2D", "Permute", "Identity",
    ):
        return 0
    # Element-wise layers and ops (activations, add, multiply, rescaling, concat ...).
    return out


def _size(shape: Shape) -> int:
    return math.prod(int(d) for d in shape if d is not None)
