"""`pack` and `unpack`: one activation to one self-checking payload and back."""
from __future__ import annotations

import struct
import zlib
from typing import Callable

import brotli
import numpy as np

from splitinfer.codec.allocated import (
    allocated_nbytes,
    decode_allocated,
    pack_allocated,
)
from splitinfer.codec.compress import (
    BROTLI_MODE,
    check_quality,
    decompress_capped,
    default_quality,
)
from splitinfer.codec.header import (
    DEFAULT_MAX_ELEMENTS,
    FLOAT_DTYPES,
    MIXED_BITS,
    Header,
    as_float32,
    as_view,
    assemble,
    channel_count,
    check_bits,
    check_lengths,
    check_shape_for_wire,
    check_size,
    is_mixed,
    read_header,
    row_count,
    sha_prefix,
    split_index_field,
    split_name_bytes,
)
from splitinfer.codec.layout import (
    data_nbytes,
    float_section,
    floats_from_section,
    resolve_layout,
    symbol_section,
    symbols_from_section,
)
from splitinfer.codec.params import (
    check_calibration,
    decode_params,
    fit_params,
    params_nbytes,
    resolve_params,
)
from splitinfer.codec.quantize import dequantize_2d, quantize_2d
from splitinfer.codec.ranges import ChannelRanges, ranges_reference
from splitinfer.errors import PackingError


def pack(
    x: np.ndarray,
    bits: int,
    *,
    model_sha256: str | None = None,
    split: str | None = None,
    split_index: int | None = None,
    ranges: ChannelRanges | None = None,
    layout: str | None = None,
    quality: int | None = None,
    params: str | None = None,
    clip_sigmas: float | None = None,
) -> bytes:
    """Encode an activation (channels last) into a self-describing payload.

    `None` means "best measured": `DEFAULT_LAYOUT[bits]`, `default_quality(...)`, and params
    ``calibrated`` when `ranges` is given, else ``tensor`` or ``channel-q8`` (see module doc).
    `ranges` and `params` are ignored for bits 16 and 32. `clip_sigmas` (per-frame ranges only)
    narrows each channel's range to its mean +- that many standard deviations, within min..max:
    at 2 bits min/max ranges spend the few levels on rare outliers (see `clip_range`). Raises
    TypeError for non-numeric input and PackingError for NaN/inf, values beyond float16 at
    bits=16, or bad arguments.
    """
    return pack_with_values(x, bits, model_sha256=model_sha256, split=split, split_index=split_index,
                            ranges=ranges, layout=layout, quality=quality, params=params,
                            clip_sigmas=clip_sigmas)[0]


def pack_with_values(
    x: np.ndarray,
    bits: int,
    *,
    model_sha256: str | None = None,
    split: str | None = None,
    split_index: int | None = None,
    ranges: ChannelRanges | None = None,
    layout: str | None = None,
    quality: int | None = None,
    params: str | None = None,
    clip_sigmas: float | None = None,
) -> tuple[bytes, Callable[[], np.ndarray]]:
    """`pack`, plus a function that returns what `unpack` will decode from the payload, without
    decoding it (bit for bit the same float32 array).

    For whoever needs the receiver's values of many payloads (the profiler): decompressing costs
    as much as packing. The values are computed only when the function is called, so timing this
    call times packing alone.
    """
    arr = as_float32(x)
    if is_mixed(bits):
        payload = pack_allocated(arr, ranges, layout, quality, params, model_sha256, split, split_index)
        return payload, lambda: unpack(payload, ranges=ranges)
    bits = check_bits(bits)
    layout = resolve_layout(layout, bits)
    check_quality(quality)
    shape = tuple(int(d) for d in arr.shape)
    check_shape_for_wire(shape)
    sha = sha_prefix(model_sha256)
    name = split_name_bytes(split)
    index = split_index_field(split_index)
    flat = arr.reshape(row_count(shape), channel_count(shape))
    if ranges is not None and isinstance(ranges, ChannelRanges) and ranges.is_allocation:
        raise PackingError(f"an allocation (ranges with per-channel bits) packs only at "
                           f"bits={MIXED_BITS}. Received: bits={bits}")

    calibration_ref = b""
    if bits in FLOAT_DTYPES:
        mode = "none"
        raw = float_section(flat, bits, layout)

        def values() -> np.ndarray:
            return arr.astype(FLOAT_DTYPES[bits]).astype(np.float32).reshape(shape)
    else:
        fitted = fit_params(flat, bits, resolve_params(params, ranges, bits), ranges, clip_sigmas)
        mode = fitted.mode
        if mode == "calibrated":
            calibration_ref = ranges_reference(ranges.lo, ranges.hi)
        symbols = quantize_2d(flat, fitted.lo, fitted.scale, bits)
        raw = fitted.section + symbol_section(symbols, bits, layout)

        def values() -> np.ndarray:  # fitted lo and scale are exactly what the decoder reads
            return dequantize_2d(symbols, fitted.lo, fitted.scale).reshape(shape)

    level = default_quality(bits, len(raw)) if quality is None else int(quality)
    body = brotli.compress(raw, mode=BROTLI_MODE, quality=level)
    return assemble(bits, layout, mode, model_sha256 is not None, shape, index, sha, name,
                    calibration_ref, body), values


def unpack(
    data: bytes | bytearray | memoryview,
    *,
    ranges: ChannelRanges | None = None,
    max_elements: int = DEFAULT_MAX_ELEMENTS,
) -> np.ndarray:
    """Decode a payload from `pack` into a float32 array of the header's shape.

    Raises PackingError (never another exception type) for truncated, corrupt, oversized or
    inconsistent payloads; decompression stops at the size implied by the header, and the
    header may not declare more than `max_elements` elements (or channels).
    Calibrated payloads need the same `ranges` that packed them.
    """
    view = as_view(data)
    header = read_header(view)
    check_lengths(view, header)
    check_size(header, max_elements)
    body = view[header.header_length : header.total_length]
    crc = zlib.crc32(body)
    if crc != header.body_crc32:
        raise PackingError(
            f"body checksum mismatch (body at offset {header.header_length}, {header.body_length} "
            f"bytes): header says crc32 0x{header.body_crc32:08x}, body has 0x{crc:08x}"
        )
    try:
        return _decode_body(bytes(body), header, ranges)
    except PackingError:
        raise
    except (ValueError, struct.error, brotli.error, OverflowError, IndexError) as e:  # safety net
        raise PackingError(f"corrupt body (at offset {header.header_length}): {e}") from None


def _decode_body(body: bytes, header: Header, ranges: ChannelRanges | None) -> np.ndarray:
    if header.params == "allocated":
        check_calibration(header, ranges)
        raw = decompress_capped(body, allocated_nbytes(row_count(header.shape), ranges), header)
        return decode_allocated(raw, header, ranges)
    if header.params == "calibrated":
        check_calibration(header, ranges)
    params_len = params_nbytes(header.params, header.channels)
    data_len = data_nbytes(header)
    raw = decompress_capped(body, params_len + data_len, header)
    if header.bits in FLOAT_DTYPES:
        return floats_from_section(raw, header).reshape(header.shape)
    lo, scale = decode_params(raw[:params_len], header, ranges)
    symbols = symbols_from_section(raw[params_len:], header)
    return dequantize_2d(symbols, lo, scale).reshape(header.shape)
