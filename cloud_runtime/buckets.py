"""Batch assembly: stack per-request tensors and pad them to a few fixed batch sizes.

A tail sees only the bucket sizes (powers of two up to max_batch, and max_batch), so kernels
autotuned or compiled per shape (cuDNN, XLA) are built a handful of times, not once per batch size.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def bucket_sizes(max_batch: int) -> tuple[int, ...]:
    """(1, 2, 4, ..., max_batch): powers of two below max_batch, then max_batch itself."""
    if max_batch < 1:
        raise ValueError(f"Expected max_batch >= 1. Received: {max_batch}")
    sizes = []
    b = 1
    while b < max_batch:
        sizes.append(b)
        b *= 2
    sizes.append(max_batch)
    return tuple(sizes)


def bucket_for(n: int, buckets: Sequence[int]) -> int:
    """The smallest bucket that holds n rows."""
    for b in buckets:
        if b >= n:
            return b
    raise ValueError(f"batch of {n} is larger than the largest bucket {max(buckets)}")


def assemble(arrays: Sequence[np.ndarray], bucket: int) -> np.ndarray:
    """Stack same-shape float32 arrays into (bucket, *shape), zero rows after the real ones."""
    if not arrays:
        raise ValueError("cannot assemble an empty batch")
    if len(arrays) > bucket:
        raise ValueError(f"{len(arrays)} arrays do not fit in a bucket of {bucket}")
    shape = arrays[0].shape
    for i, a in enumerate(arrays):
        if a.shape != shape:
            raise ValueError(f"array {i} has shape {a.shape}, the batch has {shape}")
    out = np.zeros((bucket, *shape), dtype=np.float32)
    for i, a in enumerate(arrays):
        out[i] = a
    return out


def unpad(outputs: np.ndarray, bucket: int, n: int) -> list[np.ndarray]:
    """The first n rows of a bucket-sized output, one array per request."""
    rows = outputs.shape[0] if outputs.ndim else 0
    if rows != bucket:
        raise ValueError(f"tail returned {rows} rows for a padded batch of {bucket}; expected {bucket}")
    return [outputs[i] for i in range(n)]
