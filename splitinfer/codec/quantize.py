"""Linear asymmetric quantization: symbols, steps and error bounds (no packing)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from splitinfer.codec.header import (
    QUANTIZED_BITS,
    as_float32,
    channel_count,
    check_bits,
    row_count,
)
from splitinfer.codec.params import fit_params, resolve_params
from splitinfer.codec.ranges import ChannelRanges
from splitinfer.errors import PackingError


@dataclass(frozen=True, eq=False)
class Quantized:
    """Symbols and the exact per-channel lo/scale that the decoder will use."""

    symbols: np.ndarray  # uint8, the input's shape
    lo: np.ndarray  # (C,) float32
    scale: np.ndarray  # (C,) float32
    bits: int
    params: str

    @property
    def step(self) -> np.ndarray:
        """Quantization step per channel as actually used (>= the ideal `quantization_step`)."""
        return self.scale

    @property
    def error_bound(self) -> np.ndarray:
        """Max |x - dequantized| per channel for values inside the range (before float rounding)."""
        return self.scale.astype(np.float64) / 2

    def dequantize(self) -> np.ndarray:
        return dequantize(self)


def quantize(
    x: np.ndarray,
    bits: int,
    *,
    ranges: ChannelRanges | None = None,
    params: str | None = None,
    clip_sigmas: float | None = None,
) -> Quantized:
    """The quantization `pack` applies (same parameters bit for bit), without packing."""
    arr = as_float32(x)
    bits = check_bits(bits)
    if bits not in QUANTIZED_BITS:
        raise PackingError(f"quantize needs bits in {QUANTIZED_BITS}. Received: bits={bits}")
    mode = resolve_params(params, ranges, bits)
    shape = arr.shape
    flat = arr.reshape(row_count(shape), channel_count(shape))
    fitted = fit_params(flat, bits, mode, ranges, clip_sigmas)
    symbols = quantize_2d(flat, fitted.lo, fitted.scale, bits).reshape(shape)
    return Quantized(symbols=symbols, lo=fitted.lo, scale=fitted.scale, bits=bits, params=fitted.mode)


def dequantize(q: Quantized) -> np.ndarray:
    """lo + symbol * scale per channel, float32 (what `unpack` returns)."""
    shape = q.symbols.shape
    flat = q.symbols.reshape(row_count(shape), channel_count(shape))
    return dequantize_2d(flat, q.lo, q.scale).reshape(shape)


def quantization_step(lo: np.ndarray | float, hi: np.ndarray | float, bits: int) -> np.ndarray:
    """Ideal step (hi - lo) / (2**bits - 1); the step used is this, or up to 4.4 % more in q8."""
    bits = check_bits(bits)
    if bits not in QUANTIZED_BITS:
        raise PackingError(f"quantization_step needs bits in {QUANTIZED_BITS}. Received: bits={bits}")
    lo64 = np.asarray(lo, dtype=np.float64)
    hi64 = np.asarray(hi, dtype=np.float64)
    return (hi64 - lo64) / ((1 << bits) - 1)


def error_bound(
    x: np.ndarray,
    bits: int,
    *,
    ranges: ChannelRanges | None = None,
    params: str | None = None,
) -> np.ndarray:
    """Per-channel bound on |x - unpack(pack(x))| for in-range values, float rounding aside.

    Quantized bits: half the step used. 16: float16 rounding (2**-11 relative, 2**-25 absolute
    for subnormals). 32: zero.
    """
    bits = check_bits(bits)
    if bits in QUANTIZED_BITS:
        return quantize(x, bits, ranges=ranges, params=params).error_bound
    arr = as_float32(x)
    c = channel_count(arr.shape)
    if bits == 32 or arr.size == 0:
        return np.zeros(c, dtype=np.float64)
    peak = np.abs(arr.reshape(-1, c)).max(axis=0).astype(np.float64)
    return np.maximum(peak * 2.0**-11, 2.0**-25)


def symbol_entropy(symbols: np.ndarray) -> float:
    """Order-0 (memoryless) entropy of integer symbols in bits per symbol.

    size * entropy / 8 is what an ideal order-0 coder would need, the yardstick for brotli.
    """
    sym = np.asarray(symbols)
    if sym.dtype.kind not in "ui":
        raise TypeError(f"symbol_entropy needs non-negative integer symbols, got dtype {sym.dtype}")
    if sym.size == 0:
        return 0.0
    counts = np.bincount(sym.reshape(-1).astype(np.int64))
    p = counts[counts > 0] / sym.size
    return float(-(p * np.log2(p)).sum())


def quantize_2d(flat: np.ndarray, lo: np.ndarray, scale: np.ndarray, bits: int) -> np.ndarray:
    """(P, C) float32 -> (P, C) uint8 symbols; out-of-range values clip to 0 / 2**bits - 1.

    Divides rather than multiplying by 1/scale: a subnormal scale has no finite reciprocal.
    """
    live = scale > 0
    safe = np.where(live, scale, np.float32(1))
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        t = flat - lo
        t /= safe
    if not live.all():
        t[:, ~live] = 0
    np.rint(t, out=t)
    np.clip(t, 0, (1 << bits) - 1, out=t)
    return t.astype(np.uint8)


def dequantize_2d(symbols: np.ndarray, lo: np.ndarray, scale: np.ndarray) -> np.ndarray:
    out = symbols.astype(np.float32)
    out *= scale
    out += lo
    return out
