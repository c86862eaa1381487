"""Per-channel widths (bits = MIXED_BITS): each channel at its own 0..8 bits and range.

The data section holds, per width from 1 to 8, that width's channels channel-major and densely
packed; 0-bit channels send nothing and decode as their lo.
"""
from __future__ import annotations

from dataclasses import dataclass

import brotli
import numpy as np

from splitinfer.codec import bitpack
from splitinfer.codec.compress import (
    BROTLI_MODE,
    DEFAULT_QUALITY,
    SMALL_SECTION_BYTES,
    SMALL_SECTION_QUALITY,
    check_quality,
)
from splitinfer.codec.header import (
    MAX_CHANNEL_BITS,
    MIXED_BITS,
    Header,
    assemble,
    channel_count,
    check_shape_for_wire,
    row_count,
    sha_prefix,
    split_index_field,
    split_name_bytes,
)
from splitinfer.codec.params import check_params_finite, round_up
from splitinfer.codec.quantize import dequantize_2d
from splitinfer.codec.ranges import ChannelRanges, ranges_reference
from splitinfer.errors import PackingError


def pack_allocated(arr: np.ndarray, allocation: ChannelRanges | None, layout: str | None,
                    quality: int | None, params: str | None, model_sha256: str | None,
                    split: str | None, split_index: int | None) -> bytes:
    """MIXED_BITS: each channel at its allocated width, widths grouped (see `_allocated_section`)."""
    if not isinstance(allocation, ChannelRanges) or not allocation.is_allocation:
        raise PackingError(f"bits={MIXED_BITS} packs with an allocation: pass ranges=ChannelRanges(lo, "
                           "hi, bits=...) from the bundle's calibration.json")
    if layout not in (None, "channel-dense"):
        raise PackingError(f"bits={MIXED_BITS} has one layout, 'channel-dense'. Received: layout={layout!r}")
    if params not in (None, "allocated"):
        raise PackingError(f"bits={MIXED_BITS} has one params mode, 'allocated'. Received: params={params!r}")
    check_quality(quality)
    shape = tuple(int(d) for d in arr.shape)
    check_shape_for_wire(shape)
    sha, name, index = sha_prefix(model_sha256), split_name_bytes(split), split_index_field(split_index)
    flat = arr.reshape(row_count(shape), channel_count(shape))
    if allocation.channels != flat.shape[1]:
        raise PackingError(f"allocation has {allocation.channels} channels, the tensor has {flat.shape[1]}")
    raw = _allocated_section(flat, allocation)
    level = (SMALL_SECTION_QUALITY if len(raw) <= SMALL_SECTION_BYTES else DEFAULT_QUALITY[2]) \
        if quality is None else int(quality)
    body = brotli.compress(raw, mode=BROTLI_MODE, quality=level)
    ref = ranges_reference(allocation.lo, allocation.hi, allocation.bits)
    return assemble(MIXED_BITS, "channel-dense", "allocated", model_sha256 is not None, shape,
                     index, sha, name, ref, body)


@dataclass(frozen=True)
class _WidthGroup:
    width: int
    channels: np.ndarray  # indices, ascending
    lo: np.ndarray  # (n,) float32
    scale: np.ndarray  # (n,) float32, rounded up like every other mode


def _width_groups(allocation: ChannelRanges) -> list[_WidthGroup]:
    """Every width > 0 in use, narrowest first (the wire order), with its channels' lo/scale.

    Computed once per allocation (it is immutable) and kept on it: the late splits that use
    allocations are small, so per-call setup would be most of the pack time."""
    groups = allocation.__dict__.get("_width_groups")
    if groups is None:
        groups = []
        for w in range(1, MAX_CHANNEL_BITS + 1):
            idx = np.flatnonzero(allocation.bits == w)
            if not idx.size:
                continue
            lo = allocation.lo[idx]
            scale = round_up((allocation.hi[idx].astype(np.float64) - lo.astype(np.float64))
                              / ((1 << w) - 1), np.float32)
            check_params_finite(lo, scale, (1 << w) - 1, f"allocation ({w}-bit channels)")
            groups.append(_WidthGroup(w, idx, lo, scale))
        object.__setattr__(allocation, "_width_groups", groups)
    return groups


def _allocated_section(flat: np.ndarray, allocation: ChannelRanges) -> bytes:
    """Per width w (1..8, narrowest first): its channels' symbols, channel-major, w-bit dense.
    0-bit channels send nothing. One quantization pass over all sent channels (in wire order),
    then one bit-packing call per width."""
    groups = _width_groups(allocation)
    if not groups:
        return b""
    order, lo, scale, top = allocation.__dict__.get("_wire_order") or _wire_order(allocation, groups)
    live = scale > 0
    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
        t = flat[:, order] - lo
        t /= np.where(live, scale, np.float32(1))
    if not live.all():
        t[:, ~live] = 0
    np.rint(t, out=t)
    np.clip(t, 0, top, out=t)
    symbols = t.astype(np.uint8).T  # (sent channels, rows)
    parts, at = [], 0
    for g in groups:
        n = g.channels.size
        parts.append(bitpack.pack_dense(np.ascontiguousarray(symbols[at:at + n]).reshape(-1), g.width))
        at += n
    return b"".join(parts)


def _wire_order(allocation: ChannelRanges, groups: list[_WidthGroup]) -> tuple:
    """Sent channels in wire order with their lo, scale and top symbol (kept on the allocation)."""
    plan = (np.concatenate([g.channels for g in groups]), np.concatenate([g.lo for g in groups]),
            np.concatenate([g.scale for g in groups]),
            np.concatenate([np.full(g.channels.size, (1 << g.width) - 1, np.float32) for g in groups]))
    object.__setattr__(allocation, "_wire_order", plan)
    return plan


def allocated_nbytes(rows: int, allocation: ChannelRanges) -> int:
    return sum(bitpack.dense_nbytes(rows * g.channels.size, g.width) for g in _width_groups(allocation))


def decode_allocated(raw: bytes, header: Header, allocation: ChannelRanges) -> np.ndarray:
    rows, c = row_count(header.shape), header.channels
    out = np.empty((rows, c), dtype=np.float32)
    zero = np.flatnonzero(allocation.bits == 0)
    out[:, zero] = allocation.lo[zero]
    at = 0
    for g in _width_groups(allocation):
        n = rows * g.channels.size
        nbytes = bitpack.dense_nbytes(n, g.width)
        seq = bitpack.unpack_dense(raw[at:at + nbytes], n, g.width)
        at += nbytes
        out[:, g.channels] = dequantize_2d(seq.reshape(g.channels.size, rows).T, g.lo, g.scale)
    return out.reshape(header.shape)
