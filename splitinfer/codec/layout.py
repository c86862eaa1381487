"""Element order and symbol arrangement of the data section (see `LAYOUT_TAGS`)."""
from __future__ import annotations

import numpy as np

from splitinfer.codec import bitpack
from splitinfer.codec.header import (
    FLOAT16_MAX,
    FLOAT_DTYPES,
    FLOAT_LAYOUTS,
    LAYOUTS,
    Header,
    channel_count,
    row_count,
)
from splitinfer.errors import PackingError

#: Best layout per bit width, measured by benchmarks/packing_layouts.py (smallest total bytes
#: over MobileNetV2- and ResNet50-like activations, post-ReLU and post-BN alike).
DEFAULT_LAYOUT: dict[int, str] = {
    2: "channel-dense",
    3: "channel-dense",
    4: "channel-dense",
    5: "channel-bytes",
    6: "channel-bytes",
    8: "channel-dense",
    16: "channel-dense",
    32: "channel-dense",
}


def resolve_layout(layout: str | None, bits: int) -> str:
    if layout is None:
        return DEFAULT_LAYOUT[bits]
    allowed = FLOAT_LAYOUTS if bits in FLOAT_DTYPES else LAYOUTS
    if layout not in allowed:
        raise PackingError(
            f"Expected one of {list(allowed)} for bits={bits}. Received: layout={layout!r}"
        )
    return layout


def symbol_section(symbols: np.ndarray, bits: int, layout: str) -> bytes:
    order, arrangement = layout.split("-")
    seq = symbols.T if order == "channel" else symbols
    seq = np.ascontiguousarray(seq).reshape(-1)
    if arrangement == "dense":
        return bitpack.pack_dense(seq, bits)
    if arrangement == "planes":
        return bitpack.pack_planes(seq, bits)
    return seq.tobytes()


def symbols_from_section(raw: bytes, header: Header) -> np.ndarray:
    """(P, C) uint8 symbols from the data section (its size was checked by the caller)."""
    bits, n = header.bits, header.num_elements
    order, arrangement = header.layout.split("-")
    if arrangement == "dense":
        seq = bitpack.unpack_dense(raw, n, bits)
    elif arrangement == "planes":
        seq = bitpack.unpack_planes(raw, n, bits)
    else:
        seq = np.frombuffer(raw, dtype=np.uint8, count=n)
        if n and int(seq.max()) > (1 << bits) - 1:
            at = int(np.flatnonzero(seq > (1 << bits) - 1)[0])
            raise PackingError(
                f"symbol {int(seq[at])} at data offset {at} exceeds {(1 << bits) - 1} for bits={bits}"
            )
    return _from_order(seq, header.shape, order)


def float_section(flat: np.ndarray, bits: int, layout: str) -> bytes:
    if bits == 16 and flat.size and float(np.abs(flat).max()) > FLOAT16_MAX:
        peak = float(np.abs(flat).max())
        raise PackingError(f"bits=16: |x| up to {peak!r} exceeds float16 (65504); use bits=32")
    order, arrangement = layout.split("-")
    seq = flat.T if order == "channel" else flat
    values = np.ascontiguousarray(seq, dtype=FLOAT_DTYPES[bits]).reshape(-1)
    if arrangement == "planes":  # byte planes: all byte 0s, then all byte 1s, ...
        return np.ascontiguousarray(values.view(np.uint8).reshape(-1, bits // 8).T).tobytes()
    return values.tobytes()


def floats_from_section(raw: bytes, header: Header) -> np.ndarray:
    width = header.bits // 8
    order, arrangement = header.layout.split("-")
    n = header.num_elements
    b = np.frombuffer(raw, dtype=np.uint8, count=n * width)
    if arrangement == "planes":
        b = np.ascontiguousarray(b.reshape(width, n).T)
    values = b.view(FLOAT_DTYPES[header.bits]).astype(np.float32)
    if not np.isfinite(values).all():
        at = int(np.flatnonzero(~np.isfinite(values))[0])
        raise PackingError(f"float{header.bits} data has a non-finite value at element {at}")
    return _from_order(values, header.shape, order)


def _from_order(seq: np.ndarray, shape: tuple[int, ...], order: str) -> np.ndarray:
    rows, c = row_count(shape), channel_count(shape)
    if order == "channel":
        return np.ascontiguousarray(seq.reshape(c, rows).T)
    return seq.reshape(rows, c)


def data_nbytes(header: Header) -> int:
    n, bits = header.num_elements, header.bits
    if bits in FLOAT_DTYPES:
        return n * (bits // 8)
    arrangement = header.layout.split("-")[1]
    if arrangement == "dense":
        return bitpack.dense_nbytes(n, bits)
    if arrangement == "planes":
        return bitpack.planes_nbytes(n, bits)
    return n
