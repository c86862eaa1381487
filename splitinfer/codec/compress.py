"""brotli around the body: the default quality, and decompression capped at the size the
header implies (a decompression bomb stops there).
"""
from __future__ import annotations

import brotli
import numpy as np

from splitinfer.codec.header import BITS, Header, check_bits
from splitinfer.errors import PackingError

#: brotli quality when `quality=None`. Quality 1 is within ~1.5 % of q4..q6 on quantized data
#: (~3.5 % on floats) at 2-4x their speed; but for small sections (<= SMALL_SECTION_BYTES before
#: compression, i.e. late splits) q4 saves 5-7 % on sparse data for under ~0.25 ms, so it is used
#: there (measured by benchmarks/packing_layouts.py).
DEFAULT_QUALITY: dict[int, int] = {b: 1 for b in BITS}
SMALL_SECTION_QUALITY = 4
SMALL_SECTION_BYTES = 8192
BROTLI_MODE = brotli.MODE_GENERIC
_DECOMPRESS_CHUNK = 1 << 20


def default_quality(bits: int, section_bytes: int) -> int:
    """brotli quality `pack` uses by default for a body of `section_bytes` before compression."""
    if section_bytes <= SMALL_SECTION_BYTES:
        return SMALL_SECTION_QUALITY
    return DEFAULT_QUALITY[check_bits(bits)]


def check_quality(quality: int | None) -> None:
    if quality is None:
        return
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 0 <= quality <= 11:
        raise PackingError(f"brotli quality must be an integer in 0..11. Received: quality={quality!r}")


def decompress_capped(body: bytes, expected: int, header: Header) -> bytes:
    """Decompress incrementally, failing as soon as the output passes `expected` bytes.

    brotli may overshoot a call's output limit by up to about twice the limit, so memory stays
    below expected + ~3 x _DECOMPRESS_CHUNK whatever the stream claims.
    """
    where = f"body at offset {header.header_length}"
    decoder = brotli.Decompressor()
    chunks: list[bytes] = []
    total = 0
    stalls = 0
    try:
        out = decoder.process(body, output_buffer_limit=_chunk_limit(expected, 0))
        while True:
            total += len(out)
            if total > expected:
                raise PackingError(
                    f"{where} decompresses to more than the {expected} bytes implied by shape "
                    f"{header.shape}, bits={header.bits}, layout {header.layout!r}, params "
                    f"{header.params!r} (decompression bomb or corrupt payload); stopped at {total}"
                )
            chunks.append(out)
            if decoder.is_finished():
                break
            # All input was handed over in the first call, so an empty output here means the
            # decoder wants more input than the body has.
            stalls = stalls + 1 if not out else 0
            if stalls > 1:
                raise PackingError(
                    f"{where}: brotli stream ends early after {total} of {expected} bytes "
                    "(truncated or corrupt body)"
                )
            out = decoder.process(b"", output_buffer_limit=_chunk_limit(expected, total))
    except brotli.error as e:
        raise PackingError(f"{where}: corrupt brotli stream after {total} output bytes ({e})") from None
    if total != expected:
        raise PackingError(
            f"{where} decompresses to {total} bytes, expected {expected} for shape {header.shape}, "
            f"bits={header.bits}, layout {header.layout!r}, params {header.params!r}"
        )
    return b"".join(chunks)


def _chunk_limit(expected: int, total: int) -> int:
    return max(1, min(expected - total + 1, _DECOMPRESS_CHUNK))
