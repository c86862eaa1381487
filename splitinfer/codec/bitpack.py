"""Dense and bit-plane packing of small unsigned integers (numpy only, vectorised).

Bit packing for `splitinfer.codec`. Bit order is MSB-first everywhere, the same as
`np.packbits`: in the dense layout symbol i occupies bits [i*b, (i+1)*b) of the stream, counted
from the most significant bit of byte 0. Every function here is pure and allocates only
O(n) memory for n symbols.
"""

from __future__ import annotations

import numpy as np

__all__ = [
    "dense_nbytes",
    "planes_nbytes",
    "pack_dense",
    "unpack_dense",
    "pack_planes",
    "unpack_planes",
]


def dense_nbytes(n: int, bits: int) -> int:
    """Bytes that `pack_dense` writes for n symbols of `bits` bits (no padding beyond a byte)."""
    return (n * bits + 7) // 8


def planes_nbytes(n: int, bits: int) -> int:
    """Bytes that `pack_planes` writes: `bits` planes, each padded to a whole byte."""
    return bits * ((n + 7) // 8)


def pack_dense(symbols: np.ndarray, bits: int) -> bytes:
    """Concatenate the low `bits` bits of each uint8 symbol, MSB-first."""
    sym = np.ascontiguousarray(symbols, dtype=np.uint8).reshape(-1)
    n = sym.size
    if bits == 8:
        return sym.tobytes()
    if bits == 1:
        return np.packbits(sym & 1).tobytes()
    if bits == 4:
        return _pack_nibbles(sym)
    if bits == 2:
        return _pack_nibbles(_pack_pairs(sym)) if n else b""
    # General case (3, 5, 6 bits): 8 symbols -> one `bits`-byte big-endian word.
    groups = (n + 7) // 8
    buf = np.zeros(groups * 8, dtype=np.uint8)
    buf[:n] = sym
    cols = buf.reshape(groups, 8)
    wtype = _word_type(bits)
    word = np.zeros(groups, dtype=wtype)
    for k in range(8):
        word |= cols[:, k].astype(wtype) << wtype(bits * (7 - k))
    out = np.empty((groups, bits), dtype=np.uint8)
    for j in range(bits):
        out[:, j] = word >> wtype(8 * (bits - 1 - j))
    return out.tobytes()[: dense_nbytes(n, bits)]


def unpack_dense(data: bytes | memoryview, n: int, bits: int) -> np.ndarray:
    """Inverse of `pack_dense`; `data` must hold exactly `dense_nbytes(n, bits)` bytes."""
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size != dense_nbytes(n, bits):
        raise ValueError(f"dense stream holds {raw.size} bytes, expected {dense_nbytes(n, bits)}")
    if bits == 8:
        return raw.copy()
    if bits == 1:
        return np.unpackbits(raw, count=n)
    if bits == 4:
        return _unpack_nibbles(raw, n)
    if bits == 2:
        nib = _unpack_nibbles(raw, (n + 1) // 2)
        out = np.empty(nib.size * 2, dtype=np.uint8)
        out[0::2] = nib >> 2
        out[1::2] = nib & 3
        return out[:n]
    groups = (n + 7) // 8
    flat = np.zeros(groups * bits, dtype=np.uint8)
    flat[: raw.size] = raw
    rows = flat.reshape(groups, bits)
    wtype = _word_type(bits)
    word = np.zeros(groups, dtype=wtype)
    for j in range(bits):
        word |= rows[:, j].astype(wtype) << wtype(8 * (bits - 1 - j))
    mask = wtype((1 << bits) - 1)
    out = np.empty((groups, 8), dtype=np.uint8)
    for k in range(8):
        out[:, k] = (word >> wtype(bits * (7 - k))) & mask
    return out.reshape(-1)[:n]


def pack_planes(symbols: np.ndarray, bits: int) -> bytes:
    """Bit-plane shuffle: plane k holds bit (bits-1-k) of every symbol, each plane byte-aligned."""
    sym = np.ascontiguousarray(symbols, dtype=np.uint8).reshape(-1)
    planes = [np.packbits((sym >> np.uint8(bits - 1 - k)) & np.uint8(1)) for k in range(bits)]
    return b"".join(p.tobytes() for p in planes)


def unpack_planes(data: bytes | memoryview, n: int, bits: int) -> np.ndarray:
    """Inverse of `pack_planes`; `data` must hold exactly `planes_nbytes(n, bits)` bytes."""
    raw = np.frombuffer(data, dtype=np.uint8)
    if raw.size != planes_nbytes(n, bits):
        raise ValueError(f"plane stream holds {raw.size} bytes, expected {planes_nbytes(n, bits)}")
    out = np.zeros(n, dtype=np.uint8)
    if n == 0:
        return out
    planes = np.unpackbits(raw.reshape(bits, -1), axis=1, count=n)
    for k in range(bits):
        out |= planes[k] << np.uint8(bits - 1 - k)
    return out


def _word_type(bits: int) -> type[np.unsignedinteger]:
    """Smallest unsigned type holding 8 symbols of `bits` bits."""
    return np.uint32 if bits * 8 <= 32 else np.uint64


def _pack_pairs(sym: np.ndarray) -> np.ndarray:
    """Two 2-bit symbols -> one 4-bit symbol (so 2-bit packing reuses the nibble path)."""
    if sym.size % 2:
        sym = np.concatenate([sym, np.zeros(1, dtype=np.uint8)])
    return (sym[0::2] << np.uint8(2)) | sym[1::2]


def _pack_nibbles(sym: np.ndarray) -> bytes:
    if sym.size % 2:
        sym = np.concatenate([sym, np.zeros(1, dtype=np.uint8)])
    return ((sym[0::2] << np.uint8(4)) | sym[1::2]).tobytes()


def _unpack_nibbles(raw: np.ndarray, n: int) -> np.ndarray:
    out = np.empty(raw.size * 2, dtype=np.uint8)
    out[0::2] = raw >> np.uint8(4)
    out[1::2] = raw & np.uint8(15)
    return out[:n]
