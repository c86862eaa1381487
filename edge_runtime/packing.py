"""Activation codec: quantize, bit-pack and brotli-compress a split tensor for the uplink.

The edge packs the head's output with `pack`; the cloud reads it back with `unpack` (both sides
import this module, so it uses only the standard library, numpy and brotli). `read_header` reads
the self-describing header without touching the body, so a server can route or reject a payload
before decoding it.

Numbers
-------
Bits 2..8 quantize each channel (last axis) linearly and asymmetrically: symbol
q = clip(round((x - lo) / scale), 0, 2**bits - 1), value lo + q * scale, so values inside the
range come back within scale / 2 (`error_bound`). 16 is float16, 32 is raw float32; both are
little-endian on the wire whatever the host.

Where lo and scale come from (the `params` mode, chosen per payload and tagged in the header):

* ``calibrated``: per-channel ranges measured offline (`calibrate_ranges`, stored in the bundle's
  calibration.json); the header carries an 8-byte reference to them and no per-channel bytes.
  Values outside the calibrated range are clipped. The cloud passes the same ranges to `unpack`.
* ``channel-q8``: ranges measured on this input, lo on a linear grid and scale on a 1/16-octave
  log grid per tensor, one byte each per channel, compressed with the data (scale is rounded
  up, so the step is at most 4.4 % coarser than the exact per-channel step).
* ``channel-f16``: lo and scale as float16 per channel (4 bytes per channel, the baseline).
* ``tensor``: one lo and scale (8 bytes) for the whole tensor; the default picks it when the
  channels' ranges are similar enough that per-channel parameters buy nothing.
* ``allocated`` (bits = MIXED_BITS = 1 only): every channel has its own width, 0..8 bits, and
  range, from an allocation calibrated offline (`ChannelRanges` with `bits`, made by
  converter/allocation.py); like ``calibrated`` the header carries only its reference. The data
  section holds, per width from 1 to 8, that width's channels channel-major and densely packed;
  0-bit channels send nothing and decode as their lo.

Body sections (before brotli): params, then data. params is empty (calibrated, floats),
``<ff`` lo, scale (tensor), C x ``<f2`` lo then C x ``<f2`` scale (channel-f16), or
``<ffB`` lo-grid step g, s_max, zero code z, then C lo codes k and C scale codes
(channel-q8: lo = g * (k - z), scale = s_max * 2**(-code/16), code 255 = 0). Data holds the
symbols in the layout's order (channel-major = channel by channel), MSB-first when bit-packed,
or the little-endian floats (byte planes for ``*-planes``).

Measured (``python -m benchmarks.packing_layouts``; synthetic MobileNetV2/ResNet50-like
activations, post-ReLU(6) and post-BN; bytes are deterministic, speeds depend on the machine)
----------------------------------------------------------------------------------------------
Best layout (smallest geometric-mean payload over 20 tensors, now `DEFAULT_LAYOUT`):
channel-dense at 2, 3, 4 and 8 bits, channel-bytes at 5 and 6 (brotli models whole bytes better
than 5/6-bit fields), channel-dense for float16/32 (channel-planes wins on summed bytes there,
carried by the big post-BN ResNet tensors). Channel-major beats pixel-major everywhere; bit
planes never win. Ratio vs float32 at the defaults: 31x (2 bits), 16x, 12.9x (4), 9.3x, 7.8x,
5.9x (8), 3.1x (16), 1.57x (32); at 2 and 4 bits brotli lands at 0.98x the order-0 entropy of
the symbols (`symbol_entropy`), i.e. it exploits spatial context.

Parameter cost, payload bytes at 2 bits (params cost = body minus brotli of the data alone):

===========================  ===========  ===========  ===========  ==========
split (shape)                channel-f16  channel-q8   tensor       calibrated
===========================  ===========  ===========  ===========  ==========
block_16_project_BN 3x3x112  749 (448 p)  534 (233 p)  203 (19 p)   243 (0 p)
out_relu 3x3x1280            3877 (2112)  2937 (1162)  957 (~0)     1396 (0)
out_relu 5x5x1280 (160 px)   7224 (2397)  6108 (1295)  2505 (~0)    3555 (0)
conv5_block3_out 7x7x2048    17283 (3436) 15955 (2191) 870 (11)     10588 (0)
===========================  ===========  ===========  ===========  ==========

channel-q8 parameters cost 52-64 % of the float16 ones for +2..3.5 % error (NRMSE); tensor is
tiny but wrecks small channels (mean per-channel NRMSE 0.9-5.6 vs 0.16-0.36 per-channel), so the
default only picks it when the channels' ranges are similar; calibrated drops the parameters
entirely (-51..-64 % payload vs channel-f16 at out_relu) at 1.5-4x the error of per-input ranges
(the range spans the calibration set; values outside it clip: 0.04-0.6 % of them at percentile
99.99 over 32 samples). At 8 bits q8 parameters are 5-21 % of the payload.

Speed, one core of a 2-core machine shared with other jobs (best of 25; MB/s of float32 input,
range over runs): 4-bit 20x20x64 packs in 0.36-0.52 ms (200-290 MB/s) and unpacks in 0.2-0.3 ms;
4-bit 5x5x1280 packs in 0.47-0.76 ms (170-270 MB/s); 4-bit 56x56x256 in 7-23 ms (140-460 MB/s).
float32 is the slowest at 75-200 MB/s.

Wire format (version 1, all fields little-endian, offsets in bytes)
-------------------------------------------------------------------
======  ========  ===========================================================================
offset  type      field
======  ========  ===========================================================================
0       4s        magic ``b"SIAC"``
4       u8        format version (1)
5       u8        bits: 1 (allocated), 2, 3, 4, 5, 6, 8, 16 or 32
6       u8        layout tag (`LAYOUT_TAGS`)
7       u8        params mode tag (`PARAMS_TAGS`)
8       u8        flags: bit 0 = model sha256 prefix present; other bits must be 0
9       u8        ndim (0..8)
10      u16       split index, 0xFFFF = none
12      8s        first 8 bytes of the model's sha256 (zeros when absent)
20      u8        n = length of the split name in UTF-8 bytes (0 = none)
21      n bytes   split name
..      ndim*u32  shape
..      8s        calibration reference (only when the params mode is ``calibrated`` or ``allocated``)
..      u32       body length in bytes
..      u32       crc32 of the body
..      u32       crc32 of every header byte before this field
======  ========  ===========================================================================

The body is one brotli stream that decompresses to exactly ``params section + data section``,
whose sizes follow from the header alone, which is what bounds decompression (`unpack`).
"""

from __future__ import annotations

import hashlib
import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass

import brotli
import numpy as np

from edge_runtime import _bitpack

__all__ = [
    "BITS",
    "MIXED_BITS",
    "LAYOUTS",
    "PARAMS_MODES",
    "DEFAULT_LAYOUT",
    "DEFAULT_QUALITY",
    "DEFAULT_MAX_ELEMENTS",
    "PackingError",
    "ChannelRanges",
    "Header",
    "Quantized",
    "pack",
    "unpack",
    "read_header",
    "quantize",
    "dequantize",
    "calibrate_ranges",
    "quantization_step",
    "error_bound",
    "default_quality",
    "params_nbytes",
    "symbol_entropy",
]

# --------------------------------------------------------------------------------------------
# Constant tables
# --------------------------------------------------------------------------------------------

MAGIC = b"SIAC"
FORMAT_VERSION = 1
BITS: tuple[int, ...] = (2, 3, 4, 5, 6, 8, 16, 32)
QUANTIZED_BITS: tuple[int, ...] = (2, 3, 4, 5, 6, 8)
FLOAT_DTYPES: dict[int, str] = {16: "<f2", 32: "<f4"}

#: Element order x symbol arrangement. "pixel" keeps the tensor's C-order (channel fastest),
#: "channel" stores each channel's spatial map contiguously. "dense" concatenates b-bit
#: symbols, "planes" stores bit plane by bit plane (byte plane by byte plane for floats),
#: "bytes" stores one symbol per byte (quantized bits only) and leaves packing to brotli.
LAYOUT_TAGS: dict[str, int] = {
    "pixel-dense": 1,
    "pixel-planes": 2,
    "pixel-bytes": 3,
    "channel-dense": 4,
    "channel-planes": 5,
    "channel-bytes": 6,
}
LAYOUTS: tuple[str, ...] = tuple(LAYOUT_TAGS)
FLOAT_LAYOUTS: tuple[str, ...] = ("pixel-dense", "pixel-planes", "channel-dense", "channel-planes")

PARAMS_TAGS: dict[str, int] = {
    "none": 0,  # float16 / float32 payloads
    "channel-f16": 1,
    "channel-q8": 2,
    "tensor": 3,
    "calibrated": 4,
    "allocated": 5,  # per-channel widths and ranges from the bundle (header bits = MIXED_BITS)
}
PARAMS_MODES: tuple[str, ...] = tuple(PARAMS_TAGS)
QUANTIZED_PARAMS: tuple[str, ...] = ("channel-f16", "channel-q8", "tensor", "calibrated")
#: bits value of a payload whose channels have their own widths (0..8), set by an allocation
#: (`ChannelRanges` with `bits`) calibrated offline; the only layout is channel-dense, grouped
#: by width.
MIXED_BITS = 1
MAX_CHANNEL_BITS = 8
REFERENCED_PARAMS = ("calibrated", "allocated")  # the header carries a calibration reference

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
#: brotli quality when `quality=None`. Quality 1 is within ~1.5 % of q4..q6 on quantized data
#: (~3.5 % on floats) at 2-4x their speed; but for small sections (<= SMALL_SECTION_BYTES before
#: compression, i.e. late splits) q4 saves 5-7 % on sparse data for under ~0.25 ms, so it is used
#: there (measured by benchmarks/packing_layouts.py).
DEFAULT_QUALITY: dict[int, int] = {b: 1 for b in BITS}
SMALL_SECTION_QUALITY = 4
SMALL_SECTION_BYTES = 8192
BROTLI_MODE = brotli.MODE_GENERIC

#: How a profile's `params` names a variant of one (split, bits), and the pack() arguments it
#: stands for (`variant_kwargs`): ranges from this frame, the same narrowed around the mean, or
#: ranges calibrated offline. The profiler measures each and keeps one per (split, bits).
PROFILE_VARIANTS = ("frame", "clipped", "calibrated", "allocated")
#: clip_sigmas of the "clipped" variant: only where it can win (few levels; measured on the
#: default model, see `clip_range`).
CLIP_SIGMAS: dict[int, float] = {2: 2.5, 3: 3.0}
_MINMAX_ROW_VALUES = 2048  # inner-loop length for per-channel min/max (`_channel_min_max`)
DEFAULT_MAX_ELEMENTS = 1 << 24  # 16 Mi elements = 64 MiB of float32 output
MAX_NDIM = 8
MAX_SPLIT_NAME_BYTES = 255
NO_SPLIT_INDEX = 0xFFFF
SHA_PREFIX_BYTES = 8
CALIBRATION_REF_BYTES = 8
FLAG_MODEL_SHA = 0x01
KNOWN_FLAGS = FLAG_MODEL_SHA

#: `tensor` is chosen automatically when at least this share of the non-constant channels has a
#: per-channel range >= TENSOR_AUTO_RATIO x the tensor's range (per-channel would gain at most
#: one bit of resolution there, e.g. i.i.d.-like channels whose ranges differ only by noise).
TENSOR_AUTO_RATIO = 0.5
TENSOR_AUTO_SHARE = 0.9

#: channel-q8 scale grid: scale = s_max * 2**(-code / 16), code 255 means scale 0.
Q8_SCALE_STEPS_PER_OCTAVE = 16
Q8_ZERO_SCALE_CODE = 255
Q8_LO_STEPS = 254  # one code of slack so that zero stays on the grid
RANGES_JSON_VERSION = 1

_FIXED = struct.Struct("<4sBBBBBBH8sB")  # magic .. split-name length
_TAIL = struct.Struct("<III")  # body length, body crc32, header crc32
_TENSOR_PARAMS = struct.Struct("<ff")  # lo, scale
_Q8_PARAMS = struct.Struct("<ffB")  # lo grid step, s_max, zero code
_DECOMPRESS_CHUNK = 1 << 20
_FLOAT16_MAX = 65504.0


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


class PackingError(ValueError):
    """A payload or argument that this codec cannot pack or unpack (message says where/why)."""


@dataclass(frozen=True, eq=False)
class ChannelRanges:
    """Per-channel [lo, hi] ranges, calibrated offline; float32, read-only.

    With `bits` (one width in 0..8 per channel) it is an allocation for MIXED_BITS payloads:
    channel c is quantized to bits[c] bits over [lo, hi], and a 0-bit channel is sent as
    nothing and decoded as lo[c]. `reference` identifies the exact values (8 bytes of
    sha256), so a payload packed with one calibration cannot be decoded silently with another.
    """

    lo: np.ndarray
    hi: np.ndarray
    percentile: float | None = None
    bits: np.ndarray | None = None

    def __post_init__(self) -> None:
        lo = _ranges_array(self.lo, "lo")
        hi = _ranges_array(self.hi, "hi")
        if lo.shape != hi.shape:
            raise PackingError(f"ranges lo has {lo.size} channels but hi has {hi.size}")
        bad = np.flatnonzero(lo > hi)
        if bad.size:
            c = int(bad[0])
            raise PackingError(f"ranges lo > hi at channel {c}: {lo[c]!r} > {hi[c]!r}")
        object.__setattr__(self, "lo", lo)
        object.__setattr__(self, "hi", hi)
        if self.bits is not None:
            object.__setattr__(self, "bits", _widths_array(self.bits, lo.size))

    @property
    def channels(self) -> int:
        return int(self.lo.size)

    @property
    def is_allocation(self) -> bool:
        return self.bits is not None

    @property
    def mean_bits(self) -> float | None:
        """Bits per value of the data an allocation sends (None for plain ranges)."""
        return None if self.bits is None else float(self.bits.mean()) if self.bits.size else 0.0

    @property
    def reference(self) -> str:
        """16 hex chars naming these exact float32 values (stored in calibrated payloads)."""
        return _ranges_reference(self.lo, self.hi, self.bits).hex()

    def to_json(self) -> dict:
        """A JSON-ready dict (floats are exact float32 values, so the reference round-trips)."""
        return {
            "version": RANGES_JSON_VERSION,
            "channels": self.channels,
            "percentile": self.percentile,
            "reference": self.reference,
            "lo": [float(v) for v in self.lo],
            "hi": [float(v) for v in self.hi],
            **({} if self.bits is None else {"bits": [int(b) for b in self.bits]}),
        }

    @classmethod
    def from_json(cls, d: dict) -> ChannelRanges:
        """Inverse of `to_json`; checks version, channel count and reference."""
        if not isinstance(d, dict):
            raise PackingError(f"ranges JSON must be an object, got {type(d).__name__}")
        version = d.get("version")
        if version != RANGES_JSON_VERSION:
            raise PackingError(
                f"ranges JSON version {version!r} is not supported "
                f"(this reader knows version {RANGES_JSON_VERSION})"
            )
        try:
            bits = d.get("bits")
            ranges = cls(lo=np.asarray(d["lo"]), hi=np.asarray(d["hi"]), percentile=d.get("percentile"),
                         bits=None if bits is None else np.asarray(bits))
        except KeyError as e:
            raise PackingError(f"ranges JSON lacks the {e.args[0]!r} field") from None
        if "channels" in d and d["channels"] != ranges.channels:
            raise PackingError(f"ranges JSON says {d['channels']} channels but lists {ranges.channels}")
        if d.get("reference") not in (None, ranges.reference):
            raise PackingError(
                f"ranges JSON reference {d['reference']} does not match its values ({ranges.reference})"
            )
        return ranges

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ChannelRanges):
            return NotImplemented
        same_bits = (self.bits is None) == (other.bits is None) and (
            self.bits is None or np.array_equal(self.bits, other.bits))
        return np.array_equal(self.lo, other.lo) and np.array_equal(self.hi, other.hi) and same_bits

    def __hash__(self) -> int:
        return hash(self.reference)


@dataclass(frozen=True)
class Header:
    """Everything the header says; `read_header` returns it without decoding the body.

    Absent fields are None (an empty split name is stored as absent).
    """

    version: int
    bits: int
    layout: str
    params: str
    shape: tuple[int, ...]
    split: str | None
    split_index: int | None
    model_sha256_prefix: str | None  # hex, 16 chars
    calibration_ref: str | None  # hex, 16 chars
    body_length: int
    body_crc32: int
    header_length: int

    @property
    def total_length(self) -> int:
        return self.header_length + self.body_length

    @property
    def num_elements(self) -> int:
        return math.prod(self.shape)

    @property
    def channels(self) -> int:
        return self.shape[-1] if self.shape else 1

    def matches_model(self, sha256: str) -> bool:
        """True when `sha256` (hex) starts with the model prefix stored in the header."""
        prefix = self.model_sha256_prefix
        return prefix is not None and sha256.lower().startswith(prefix)


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
    arr = _as_float32(x)
    if _is_mixed(bits):
        return _pack_allocated(arr, ranges, layout, quality, params, model_sha256, split, split_index)
    bits = _check_bits(bits)
    layout = _resolve_layout(layout, bits)
    _check_quality(quality)
    shape = tuple(int(d) for d in arr.shape)
    _check_shape_for_wire(shape)
    sha = _sha_prefix(model_sha256)
    name = _split_name_bytes(split)
    index = _split_index_field(split_index)
    flat = arr.reshape(_rows(shape), _channels(shape))
    if ranges is not None and isinstance(ranges, ChannelRanges) and ranges.is_allocation:
        raise PackingError(f"an allocation (ranges with per-channel bits) packs only at "
                           f"bits={MIXED_BITS}. Received: bits={bits}")

    calibration_ref = b""
    if bits in FLOAT_DTYPES:
        mode = "none"
        raw = _float_section(flat, bits, layout)
    else:
        fitted = _fit_params(flat, bits, _resolve_params(params, ranges, bits), ranges, clip_sigmas)
        mode = fitted.mode
        if mode == "calibrated":
            calibration_ref = _ranges_reference(ranges.lo, ranges.hi)
        symbols = _quantize_2d(flat, fitted.lo, fitted.scale, bits)
        raw = fitted.section + _symbol_section(symbols, bits, layout)

    level = default_quality(bits, len(raw)) if quality is None else int(quality)
    body = brotli.compress(raw, mode=BROTLI_MODE, quality=level)
    return _assemble(bits, layout, mode, model_sha256 is not None, shape, index, sha, name,
                     calibration_ref, body)


def _assemble(bits: int, layout: str, mode: str, has_sha: bool, shape: tuple[int, ...], index: int,
              sha: bytes, name: bytes, calibration_ref: bytes, body: bytes) -> bytes:
    """Header (with both checksums) + body."""
    flags = FLAG_MODEL_SHA if has_sha else 0
    head = _FIXED.pack(
        MAGIC, FORMAT_VERSION, bits, LAYOUT_TAGS[layout], PARAMS_TAGS[mode], flags, len(shape),
        index, sha, len(name),
    )
    head += name + struct.pack(f"<{len(shape)}I", *shape) + calibration_ref
    head += struct.pack("<II", len(body), zlib.crc32(body))
    head += struct.pack("<I", zlib.crc32(head))
    return head + body


def _is_mixed(bits: object) -> bool:
    return not isinstance(bits, bool) and isinstance(bits, (int, np.integer)) and int(bits) == MIXED_BITS


def _pack_allocated(arr: np.ndarray, allocation: ChannelRanges | None, layout: str | None,
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
    _check_quality(quality)
    shape = tuple(int(d) for d in arr.shape)
    _check_shape_for_wire(shape)
    sha, name, index = _sha_prefix(model_sha256), _split_name_bytes(split), _split_index_field(split_index)
    flat = arr.reshape(_rows(shape), _channels(shape))
    if allocation.channels != flat.shape[1]:
        raise PackingError(f"allocation has {allocation.channels} channels, the tensor has {flat.shape[1]}")
    raw = _allocated_section(flat, allocation)
    level = (SMALL_SECTION_QUALITY if len(raw) <= SMALL_SECTION_BYTES else DEFAULT_QUALITY[2]) \
        if quality is None else int(quality)
    body = brotli.compress(raw, mode=BROTLI_MODE, quality=level)
    ref = _ranges_reference(allocation.lo, allocation.hi, allocation.bits)
    return _assemble(MIXED_BITS, "channel-dense", "allocated", model_sha256 is not None, shape,
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
            scale = _round_up((allocation.hi[idx].astype(np.float64) - lo.astype(np.float64))
                              / ((1 << w) - 1), np.float32)
            _check_params_finite(lo, scale, (1 << w) - 1, f"allocation ({w}-bit channels)")
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
        parts.append(_bitpack.pack_dense(np.ascontiguousarray(symbols[at:at + n]).reshape(-1), g.width))
        at += n
    return b"".join(parts)


def _wire_order(allocation: ChannelRanges, groups: list[_WidthGroup]) -> tuple:
    """Sent channels in wire order with their lo, scale and top symbol (kept on the allocation)."""
    plan = (np.concatenate([g.channels for g in groups]), np.concatenate([g.lo for g in groups]),
            np.concatenate([g.scale for g in groups]),
            np.concatenate([np.full(g.channels.size, (1 << g.width) - 1, np.float32) for g in groups]))
    object.__setattr__(allocation, "_wire_order", plan)
    return plan


def _allocated_nbytes(rows: int, allocation: ChannelRanges) -> int:
    return sum(_bitpack.dense_nbytes(rows * g.channels.size, g.width) for g in _width_groups(allocation))


def _decode_allocated(raw: bytes, header: Header, allocation: ChannelRanges) -> np.ndarray:
    rows, c = _rows(header.shape), header.channels
    out = np.empty((rows, c), dtype=np.float32)
    zero = np.flatnonzero(allocation.bits == 0)
    out[:, zero] = allocation.lo[zero]
    at = 0
    for g in _width_groups(allocation):
        n = rows * g.channels.size
        nbytes = _bitpack.dense_nbytes(n, g.width)
        seq = _bitpack.unpack_dense(raw[at:at + nbytes], n, g.width)
        at += nbytes
        out[:, g.channels] = _dequantize_2d(seq.reshape(g.channels.size, rows).T, g.lo, g.scale)
    return out.reshape(header.shape)


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
    view = _as_view(data)
    header = read_header(view)
    _check_lengths(view, header)
    _check_size(header, max_elements)
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


def read_header(data: bytes | bytearray | memoryview) -> Header:
    """Parse and check the header (magic, version, tags, shape, header crc32); body untouched."""
    view = _as_view(data)
    size = len(view)
    if size < _FIXED.size:
        raise PackingError(
            f"truncated header: need at least {_FIXED.size} bytes at offset 0, payload has {size}"
        )
    magic, version, bits, layout_tag, params_tag, flags, ndim, index, sha, name_len = (
        _FIXED.unpack_from(view, 0)
    )
    if magic != MAGIC:
        raise PackingError(f"bad magic at offset 0: expected {MAGIC!r}, got {bytes(magic)!r}")
    if version != FORMAT_VERSION:
        raise PackingError(
            f"unsupported format version {version} at offset 4 "
            f"(this reader knows version {FORMAT_VERSION})"
        )
    if ndim > MAX_NDIM:
        raise PackingError(f"ndim {ndim} at offset 9 exceeds the maximum of {MAX_NDIM}")
    calibrated = params_tag in {PARAMS_TAGS[m] for m in REFERENCED_PARAMS}
    dims_at = _FIXED.size + name_len
    ref_at = dims_at + 4 * ndim
    tail_at = ref_at + (CALIBRATION_REF_BYTES if calibrated else 0)
    header_length = tail_at + _TAIL.size
    if size < header_length:
        raise PackingError(
            f"truncated header: split name ({name_len} B) and shape (ndim={ndim}) need "
            f"{header_length} header bytes, payload has {size}"
        )
    body_length, body_crc, header_crc = _TAIL.unpack_from(view, tail_at)
    crc = zlib.crc32(view[: header_length - 4])
    if crc != header_crc:
        raise PackingError(
            f"header checksum mismatch at offset {header_length - 4}: stored 0x{header_crc:08x}, "
            f"header bytes 0..{header_length - 5} give 0x{crc:08x}"
        )
    _check_header_fields(bits, layout_tag, params_tag, flags)
    try:
        split = bytes(view[_FIXED.size : dims_at]).decode("utf-8") if name_len else None
    except UnicodeDecodeError as e:
        raise PackingError(f"split name at offset {_FIXED.size} is not UTF-8: {e}") from None
    shape = struct.unpack_from(f"<{ndim}I", view, dims_at)
    ref = bytes(view[ref_at:tail_at]).hex() if calibrated else None
    return Header(
        version=version,
        bits=bits,
        layout=_TAG_LAYOUTS[layout_tag],
        params=_TAG_PARAMS[params_tag],
        shape=tuple(shape),
        split=split,
        split_index=None if index == NO_SPLIT_INDEX else index,
        model_sha256_prefix=bytes(sha).hex() if flags & FLAG_MODEL_SHA else None,
        calibration_ref=ref,
        body_length=body_length,
        body_crc32=body_crc,
        header_length=header_length,
    )


def quantize(
    x: np.ndarray,
    bits: int,
    *,
    ranges: ChannelRanges | None = None,
    params: str | None = None,
    clip_sigmas: float | None = None,
) -> Quantized:
    """The quantization `pack` applies (same parameters bit for bit), without packing."""
    arr = _as_float32(x)
    bits = _check_bits(bits)
    if bits not in QUANTIZED_BITS:
        raise PackingError(f"quantize needs bits in {QUANTIZED_BITS}. Received: bits={bits}")
    mode = _resolve_params(params, ranges, bits)
    shape = arr.shape
    flat = arr.reshape(_rows(shape), _channels(shape))
    fitted = _fit_params(flat, bits, mode, ranges, clip_sigmas)
    symbols = _quantize_2d(flat, fitted.lo, fitted.scale, bits).reshape(shape)
    return Quantized(symbols=symbols, lo=fitted.lo, scale=fitted.scale, bits=bits, params=fitted.mode)


def dequantize(q: Quantized) -> np.ndarray:
    """lo + symbol * scale per channel, float32 (what `unpack` returns)."""
    shape = q.symbols.shape
    flat = q.symbols.reshape(_rows(shape), _channels(shape))
    return _dequantize_2d(flat, q.lo, q.scale).reshape(shape)


def calibrate_ranges(
    samples: np.ndarray | Sequence[np.ndarray], percentile: float = 99.99
) -> ChannelRanges:
    """Per-channel ranges from a stack of activations (channels last).

    lo/hi are the (100 - percentile)-th and percentile-th percentiles over every sample and
    position; percentile=100 gives min/max (no clipping on the calibration set).
    """
    if not 50.0 < float(percentile) <= 100.0:
        raise PackingError(f"percentile must be in (50, 100]. Received: percentile={percentile}")
    arrays = [samples] if isinstance(samples, np.ndarray) else list(samples)
    if not arrays:
        raise PackingError("calibrate_ranges needs at least one sample")
    mats = [_as_float32(a) for a in arrays]
    channels = {_channels(m.shape) for m in mats}
    if len(channels) != 1:
        raise PackingError(f"samples disagree on the channel count: {sorted(channels)}")
    c = channels.pop()
    stack = np.concatenate([m.reshape(-1, c) if c else m.reshape(0, 0) for m in mats])
    if stack.shape[0] == 0:
        raise PackingError("calibrate_ranges needs at least one value per channel")
    if percentile == 100.0:
        lo, hi = _channel_min_max(np.ascontiguousarray(stack))
    else:
        lo, hi = np.percentile(stack, [100.0 - percentile, percentile], axis=0)
    lo32 = lo.astype(np.float32)
    hi32 = np.maximum(hi.astype(np.float32), lo32)
    return ChannelRanges(lo=lo32, hi=hi32, percentile=float(percentile))


def quantization_step(lo: np.ndarray | float, hi: np.ndarray | float, bits: int) -> np.ndarray:
    """Ideal step (hi - lo) / (2**bits - 1); the step used is this, or up to 4.4 % more in q8."""
    bits = _check_bits(bits)
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
    bits = _check_bits(bits)
    if bits in QUANTIZED_BITS:
        return quantize(x, bits, ranges=ranges, params=params).error_bound
    arr = _as_float32(x)
    c = _channels(arr.shape)
    if bits == 32 or arr.size == 0:
        return np.zeros(c, dtype=np.float64)
    peak = np.abs(arr.reshape(-1, c)).max(axis=0).astype(np.float64)
    return np.maximum(peak * 2.0**-11, 2.0**-25)


def default_quality(bits: int, section_bytes: int) -> int:
    """brotli quality `pack` uses by default for a body of `section_bytes` before compression."""
    if section_bytes <= SMALL_SECTION_BYTES:
        return SMALL_SECTION_QUALITY
    return DEFAULT_QUALITY[_check_bits(bits)]


def params_nbytes(mode: str, channels: int) -> int:
    """Uncompressed size of the params section for `mode` (what per-channel parameters cost)."""
    if mode not in PARAMS_TAGS:
        raise PackingError(f"Expected one of {list(PARAMS_MODES)}. Received: params={mode!r}")
    c = channels
    return {
        "none": 0,
        "calibrated": 0,
        "allocated": 0,
        "tensor": _TENSOR_PARAMS.size,
        "channel-f16": 4 * c,
        "channel-q8": _Q8_PARAMS.size + 2 * c,
    }[mode]


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


# --------------------------------------------------------------------------------------------
# Private helpers
# --------------------------------------------------------------------------------------------

_TAG_LAYOUTS = {tag: name for name, tag in LAYOUT_TAGS.items()}
_TAG_PARAMS = {tag: name for name, tag in PARAMS_TAGS.items()}
_Q8_SCALE_TABLE = np.array(
    [2.0 ** (-code / Q8_SCALE_STEPS_PER_OCTAVE) for code in range(Q8_ZERO_SCALE_CODE)] + [0.0],
    dtype=np.float32,
)


@dataclass(frozen=True, eq=False)
class _Params:
    mode: str  # the resolved params mode (never "auto")
    lo: np.ndarray  # (C,) float32, exactly as decoded
    scale: np.ndarray  # (C,) float32, exactly as decoded
    section: bytes  # what goes into the body ahead of the symbols


def _bits_message(bits: object) -> str:
    allowed = "{" + ", ".join(str(b) for b in BITS) + "}"
    return f"Expected one of {allowed} (or {MIXED_BITS} with an allocation). Received: bits={bits!r}"


def _check_bits(bits: object) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or int(bits) not in BITS:
        raise PackingError(_bits_message(bits))
    return int(bits)


def _resolve_layout(layout: str | None, bits: int) -> str:
    if layout is None:
        return DEFAULT_LAYOUT[bits]
    allowed = FLOAT_LAYOUTS if bits in FLOAT_DTYPES else LAYOUTS
    if layout not in allowed:
        raise PackingError(
            f"Expected one of {list(allowed)} for bits={bits}. Received: layout={layout!r}"
        )
    return layout


def _check_quality(quality: int | None) -> None:
    if quality is None:
        return
    if isinstance(quality, bool) or not isinstance(quality, (int, np.integer)) or not 0 <= quality <= 11:
        raise PackingError(f"brotli quality must be an integer in 0..11. Received: quality={quality!r}")


def _resolve_params(params: str | None, ranges: ChannelRanges | None, bits: int) -> str:
    """Explicit mode, or None: calibrated if ranges are given, else decided in _fit_params."""
    if ranges is not None and not isinstance(ranges, ChannelRanges):
        raise TypeError(f"ranges must be a ChannelRanges, got {type(ranges).__name__}")
    if params is None:
        return "calibrated" if ranges is not None else "auto"
    if params not in QUANTIZED_PARAMS:
        raise PackingError(f"Expected one of {list(QUANTIZED_PARAMS)}. Received: params={params!r}")
    if (params == "calibrated") != (ranges is not None):
        raise PackingError(
            f"params={params!r} {'needs' if params == 'calibrated' else 'conflicts with'} `ranges`"
        )
    return params


def _as_float32(x: object) -> np.ndarray:
    arr = np.asarray(x)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"expected a numeric array, got dtype {arr.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.asarray(arr, dtype=np.float32, order="C")
    if not np.isfinite(out).all():
        bad = int(np.flatnonzero(~np.isfinite(out.reshape(-1)))[0])
        raise PackingError(
            f"input has a non-finite value at flat index {bad} ({arr.reshape(-1)[bad]!r} "
            "as float32); NaN and inf cannot be packed"
        )
    return out


def _channels(shape: tuple[int, ...]) -> int:
    return int(shape[-1]) if len(shape) else 1


def _rows(shape: tuple[int, ...]) -> int:
    return math.prod(shape[:-1]) if len(shape) else 1


def _check_shape_for_wire(shape: tuple[int, ...]) -> None:
    if len(shape) > MAX_NDIM:
        raise PackingError(f"ndim {len(shape)} exceeds the maximum of {MAX_NDIM}")
    if any(d > 0xFFFFFFFF for d in shape):
        raise PackingError(f"shape {shape} has a dimension beyond 2**32 - 1")


def _sha_prefix(model_sha256: str | None) -> bytes:
    if model_sha256 is None:
        return bytes(SHA_PREFIX_BYTES)
    try:
        prefix = bytes.fromhex(model_sha256[: 2 * SHA_PREFIX_BYTES])
    except (TypeError, ValueError):
        prefix = b""
    if len(prefix) != SHA_PREFIX_BYTES:
        raise PackingError(
            f"model_sha256 must be a hex string of at least {2 * SHA_PREFIX_BYTES} characters. "
            f"Received: {model_sha256!r}"
        )
    return prefix


def _split_name_bytes(split: str | None) -> bytes:
    if split is None:
        return b""
    name = split.encode("utf-8")
    if len(name) > MAX_SPLIT_NAME_BYTES:
        raise PackingError(
            f"split name is {len(name)} UTF-8 bytes, the maximum is {MAX_SPLIT_NAME_BYTES}"
        )
    return name


def _split_index_field(split_index: int | None) -> int:
    if split_index is None:
        return NO_SPLIT_INDEX
    if isinstance(split_index, bool) or not isinstance(split_index, (int, np.integer)) or not (
        0 <= split_index < NO_SPLIT_INDEX
    ):
        raise PackingError(f"split_index must be in 0..{NO_SPLIT_INDEX - 1}. Received: {split_index!r}")
    return int(split_index)


def _ranges_array(values: object, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind not in "iuf":
        raise PackingError(f"ranges {what} must be numeric, got dtype {arr.dtype}")
    if arr.ndim != 1:
        raise PackingError(f"ranges {what} must be 1-D (one value per channel), got shape {arr.shape}")
    with np.errstate(over="ignore", invalid="ignore"):
        out = arr.astype(np.float32)
    if not np.isfinite(out).all():
        raise PackingError(f"ranges {what} has NaN/inf or values beyond float32")
    out.setflags(write=False)
    return out


def _ranges_reference(lo: np.ndarray, hi: np.ndarray, bits: np.ndarray | None = None) -> bytes:
    h = hashlib.sha256(b"SIAC-ranges-v1")
    h.update(struct.pack("<I", lo.size))
    h.update(lo.astype("<f4").tobytes())
    h.update(hi.astype("<f4").tobytes())
    if bits is not None:  # plain ranges keep the references they always had
        h.update(b"widths")
        h.update(bits.astype(np.uint8).tobytes())
    return h.digest()[:CALIBRATION_REF_BYTES]


def _widths_array(values: object, channels: int) -> np.ndarray:
    arr = np.asarray(values)
    if arr.dtype.kind not in "iu" or arr.shape != (channels,):
        raise PackingError(f"allocation bits must be {channels} integers (one per channel), got "
                           f"dtype {arr.dtype}, shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() > MAX_CHANNEL_BITS):
        raise PackingError(f"allocation bits must be in 0..{MAX_CHANNEL_BITS}, got "
                           f"{int(arr.min())}..{int(arr.max())}")
    out = arr.astype(np.uint8)
    out.setflags(write=False)
    return out


# ---- parameters -----------------------------------------------------------------------------


def _fit_params(flat: np.ndarray, bits: int, mode: str, ranges: ChannelRanges | None,
                clip_sigmas: float | None = None) -> _Params:
    """lo/scale per channel for `mode` ("auto" picks tensor or channel-q8) and their bytes."""
    levels = (1 << bits) - 1
    c = flat.shape[1]
    if clip_sigmas is not None and (isinstance(clip_sigmas, bool) or not clip_sigmas > 0
                                    or not math.isfinite(clip_sigmas)):
        raise PackingError(f"clip_sigmas must be a positive number. Received: {clip_sigmas!r}")
    if mode == "calibrated":
        if ranges.channels != c:
            raise PackingError(f"ranges have {ranges.channels} channels, the tensor has {c}")
        lo, scale = _calibrated_params(ranges, bits)
        return _Params(mode=mode, lo=lo, scale=scale, section=b"")
    if flat.shape[0] == 0:
        lo = hi = np.zeros(c, dtype=np.float64)
    else:
        lo, hi = (v.astype(np.float64) for v in _channel_min_max(flat))
        if clip_sigmas is not None:
            lo, hi = clip_range(flat, lo, hi, clip_sigmas)
    if mode == "auto":
        mode = "tensor" if _tensor_is_enough(lo, hi) else "channel-q8"
    if mode == "tensor":
        return _tensor_params(lo, hi, levels, c)
    if mode == "channel-f16":
        return _f16_params(lo, hi, levels)
    return _q8_params(lo, hi, levels)


def _channel_min_max(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column min and max of a C-contiguous (P, C) array, exactly as .min/.max(axis=0).

    numpy reduces axis 0 one row of C values at a time, so few channels (C = 16: 80x80x16 is
    0.6 ms) run at a fraction of memory speed. Viewing K rows as one row of K*C values first
    (then reducing the K) makes the inner loop long: 12x faster there, never slower.
    """
    p, c = flat.shape
    k = max(1, _MINMAX_ROW_VALUES // max(c, 1))
    if k == 1 or p < 2 * k:
        return flat.min(axis=0), flat.max(axis=0)
    m = (p // k) * k
    blocks = flat[:m].reshape(p // k, k * c)
    lo = blocks.min(axis=0).reshape(k, c).min(axis=0)
    hi = blocks.max(axis=0).reshape(k, c).max(axis=0)
    if m < p:
        lo = np.minimum(lo, flat[m:].min(axis=0))
        hi = np.maximum(hi, flat[m:].max(axis=0))
    return lo, hi


def variant_kwargs(variant: str, bits: int, ranges: ChannelRanges | None) -> dict:
    """pack() keyword arguments for a profile variant (`PROFILE_VARIANTS`) at `bits`.

    "calibrated" without `ranges` (a bundle whose calibration.json lacks the split) and
    "clipped" where no clip is defined fall back to per-frame ranges, which always decode.
    """
    if variant not in PROFILE_VARIANTS:
        raise PackingError(f"Expected one of {list(PROFILE_VARIANTS)}. Received: params={variant!r}")
    if variant == "allocated":
        if bits != MIXED_BITS or ranges is None or not ranges.is_allocation:
            raise PackingError(f"the 'allocated' variant packs at bits={MIXED_BITS} with the split's "
                               "allocation from calibration.json; rerun python -m converter.profile")
        return {"ranges": ranges}
    if bits not in QUANTIZED_BITS:
        return {}
    if variant == "calibrated" and ranges is not None:
        return {"ranges": ranges}
    if variant == "clipped" and bits in CLIP_SIGMAS:
        return {"clip_sigmas": CLIP_SIGMAS[bits]}
    return {}


def clip_range(flat: np.ndarray, lo: np.ndarray, hi: np.ndarray, sigmas: float
               ) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel [lo, hi] narrowed to mean +- `sigmas` standard deviations (float64).

    Measured on the default model (200 scenes, top-1 agreement with the float model at 2 bits):
    expanded_conv_project_BN 0.76 with min/max -> 0.93 at 2-2.5 sigmas, block_1_expand 0.80 ->
    0.94, block_2_add 0.85 -> 0.92; but block_3_project 0.94 -> 0.90 (its outliers matter), so
    the profiler measures both and keeps what wins per (split, bits).
    Moments are taken of x - lo, so a large offset cannot cancel the variance away.
    """
    p, c = flat.shape
    d = flat - lo.astype(np.float32)
    s1 = _channel_sum(d).astype(np.float64)
    np.multiply(d, d, out=d)
    s2 = _channel_sum(d).astype(np.float64)
    mean = s1 / p
    std = np.sqrt(np.maximum(s2 / p - mean * mean, 0.0))
    new_lo = np.maximum(lo, lo + mean - sigmas * std)
    new_hi = np.minimum(hi, lo + mean + sigmas * std)
    return new_lo, np.maximum(new_hi, new_lo)


def _channel_sum(flat: np.ndarray) -> np.ndarray:
    """Per-column sum of a (P, C) array, with `_channel_min_max`'s long inner loop (float64)."""
    p, c = flat.shape
    k = max(1, _MINMAX_ROW_VALUES // max(c, 1))
    if k == 1 or p < 2 * k:
        return flat.sum(axis=0, dtype=np.float64)
    m = (p // k) * k
    total = flat[:m].reshape(p // k, k * c).sum(axis=0, dtype=np.float64).reshape(k, c).sum(axis=0)
    if m < p:
        total += flat[m:].sum(axis=0, dtype=np.float64)
    return total


def _tensor_is_enough(lo: np.ndarray, hi: np.ndarray) -> bool:
    """Per-channel ranges buy nothing when nearly all are close to the tensor's range."""
    if lo.size == 0:
        return True
    span = float(hi.max() - lo.min())
    widths = hi - lo
    live = widths[widths > 0]
    if span == 0 or live.size == 0:
        return True
    return float(np.mean(live >= TENSOR_AUTO_RATIO * span)) >= TENSOR_AUTO_SHARE


def _calibrated_params(ranges: ChannelRanges, bits: int) -> tuple[np.ndarray, np.ndarray]:
    levels = (1 << bits) - 1
    lo = ranges.lo.astype(np.float32)
    # Rounded up (not to nearest) so lo + levels * scale >= hi even for tiny/subnormal steps.
    scale = _round_up((ranges.hi.astype(np.float64) - ranges.lo.astype(np.float64)) / levels, np.float32)
    _check_params_finite(lo, scale, levels, "calibrated ranges")
    return lo, scale


def _tensor_params(lo: np.ndarray, hi: np.ndarray, levels: int, c: int) -> _Params:
    t_lo = np.float32(lo.min()) if lo.size else np.float32(0)
    t_hi = float(hi.max()) if hi.size else 0.0
    scale = _round_up(np.array([(t_hi - float(t_lo)) / levels]), np.float32)[0]
    lo32 = np.full(c, t_lo, dtype=np.float32)
    scale32 = np.full(c, scale, dtype=np.float32)
    _check_params_finite(lo32[:1], scale32[:1], levels, "tensor range")
    section = _TENSOR_PARAMS.pack(float(t_lo), float(scale))
    return _Params(mode="tensor", lo=lo32, scale=scale32, section=section)


def _f16_params(lo: np.ndarray, hi: np.ndarray, levels: int) -> _Params:
    if lo.size and (np.abs(lo).max() > _FLOAT16_MAX or (hi - lo).max() / levels > _FLOAT16_MAX):
        raise PackingError("channel ranges exceed float16; use params='channel-q8' or 'tensor'")
    lo16 = _round_down(lo, np.float16)
    scale16 = _round_up((hi - lo16.astype(np.float64)) / levels, np.float16)
    if not (np.isfinite(lo16).all() and np.isfinite(scale16).all()):
        raise PackingError("channel ranges exceed float16; use params='channel-q8' or 'tensor'")
    section = lo16.astype("<f2").tobytes() + scale16.astype("<f2").tobytes()
    lo32, scale32 = lo16.astype(np.float32), scale16.astype(np.float32)
    _check_params_finite(lo32, scale32, levels, "channel ranges")
    return _Params(mode="channel-f16", lo=lo32, scale=scale32, section=section)


def _q8_params(lo: np.ndarray, hi: np.ndarray, levels: int) -> _Params:
    """lo on a zero-anchored linear grid, scale on a log grid below the largest; 2 B/channel."""
    c = lo.size
    lmin = min(float(lo.min()), 0.0) if c else 0.0
    lmax = max(float(lo.max()), 0.0) if c else 0.0
    if lmax > lmin:
        g = _f32_up((lmax - lmin) / Q8_LO_STEPS)
        z = int(min(math.ceil(-lmin / g), 255))
        k = np.clip(np.floor(lo / g) + z, 0, 255).astype(np.uint8)
    else:
        g, z, k = 0.0, 0, np.zeros(c, dtype=np.uint8)
    lo_dec = _q8_lo(np.float32(g), z, k)
    over = (lo_dec.astype(np.float64) > lo) & (k > 0)
    if over.any():  # float rounding put lo_dec above lo: step one code down
        k = k - over.astype(np.uint8)
        lo_dec = _q8_lo(np.float32(g), z, k)
    need = np.maximum(hi - lo_dec.astype(np.float64), 0.0) / levels
    s_max = _f32_up(float(need.max()) if c else 0.0)
    codes = np.full(c, Q8_ZERO_SCALE_CODE, dtype=np.uint8)
    if s_max > 0:
        live = need > 0
        with np.errstate(divide="ignore"):
            octaves = -np.log2(need[live] / s_max) * Q8_SCALE_STEPS_PER_OCTAVE
        codes[live] = np.clip(np.floor(octaves), 0, Q8_ZERO_SCALE_CODE - 1).astype(np.uint8)
        short = (_q8_scale(np.float32(s_max), codes).astype(np.float64) < need) & (codes > 0)
        codes = codes - short.astype(np.uint8)
    scale_dec = _q8_scale(np.float32(s_max), codes)
    _check_params_finite(lo_dec, scale_dec, levels, "channel ranges")
    section = _Q8_PARAMS.pack(g, s_max, z) + k.tobytes() + codes.tobytes()
    return _Params(mode="channel-q8", lo=lo_dec, scale=scale_dec, section=section)


def _q8_lo(g: np.float32, z: int, k: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is caught by the finite check
        return (np.float32(g) * (k.astype(np.float32) - np.float32(z))).astype(np.float32)


def _q8_scale(s_max: np.float32, codes: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        return (np.float32(s_max) * _Q8_SCALE_TABLE[codes]).astype(np.float32)


def _round_up(values: np.ndarray, dtype: type[np.floating]) -> np.ndarray:
    """Cast to `dtype`, nudging each value up one ulp where the cast rounded it down."""
    with np.errstate(over="ignore"):
        out = np.asarray(values, dtype=np.float64).astype(dtype)
    low = out.astype(np.float64) < values
    out[low] = np.nextafter(out[low], dtype(np.inf))
    return out


def _f32_up(value: float) -> float:
    """`_round_up` of one Python float to float32, without the array round trip (it is called
    for per-tensor constants of every payload)."""
    with np.errstate(over="ignore"):
        f = np.float32(value)
    if float(f) < value:
        f = np.nextafter(f, np.float32(np.inf))
    return float(f)


def _round_down(values: np.ndarray, dtype: type[np.floating]) -> np.ndarray:
    with np.errstate(over="ignore"):
        out = np.asarray(values, dtype=np.float64).astype(dtype)
    high = out.astype(np.float64) > values
    out[high] = np.nextafter(out[high], dtype(-np.inf))
    return out


def _check_params_finite(lo: np.ndarray, scale: np.ndarray, levels: int, what: str) -> None:
    """lo, scale and the top of the range lo + levels * scale must be finite float32, scale >= 0."""
    with np.errstate(over="ignore", invalid="ignore"):
        top = lo.astype(np.float32) + np.float32(levels) * scale.astype(np.float32)
        ok = np.isfinite(lo).all() and np.isfinite(scale).all() and np.isfinite(top).all()
    if not ok:
        raise PackingError(f"{what}: quantization parameters are NaN/inf or overflow float32")
    if (scale < 0).any():
        raise PackingError(f"{what}: negative quantization scale")


def _check_calibration(header: Header, ranges: ChannelRanges | None) -> None:
    c = header.channels
    if ranges is None:
        raise PackingError(
            f"payload was packed with calibrated ranges (reference {header.calibration_ref}); "
            "pass the same ChannelRanges to unpack(ranges=...)"
        )
    if not isinstance(ranges, ChannelRanges):
        raise TypeError(f"ranges must be a ChannelRanges, got {type(ranges).__name__}")
    if ranges.channels != c:
        raise PackingError(f"ranges have {ranges.channels} channels, the payload has {c}")
    if ranges.is_allocation != (header.params == "allocated"):
        want = "an allocation (ranges with per-channel bits)" if header.params == "allocated" else "plain ranges"
        raise PackingError(f"payload is {header.params!r}: pass {want} to unpack(ranges=...)")
    if ranges.reference != header.calibration_ref:
        raise PackingError(
            f"calibration reference mismatch: payload says {header.calibration_ref}, "
            f"the given ranges are {ranges.reference}"
        )


def _decode_params(
    raw: bytes, header: Header, ranges: ChannelRanges | None
) -> tuple[np.ndarray, np.ndarray]:
    """lo/scale per channel from the decompressed params section; PackingError if unusable."""
    c = header.channels
    levels = (1 << header.bits) - 1
    mode = header.params
    if mode == "calibrated":
        _check_calibration(header, ranges)
        return _calibrated_params(ranges, header.bits)
    if mode == "tensor":
        lo, scale = _TENSOR_PARAMS.unpack_from(raw, 0)
        lo32 = np.full(c, lo, dtype=np.float32)
        scale32 = np.full(c, scale, dtype=np.float32)
    elif mode == "channel-f16":
        lo32 = np.frombuffer(raw, dtype="<f2", count=c, offset=0).astype(np.float32)
        scale32 = np.frombuffer(raw, dtype="<f2", count=c, offset=2 * c).astype(np.float32)
    else:  # channel-q8
        g, s_max, z = _Q8_PARAMS.unpack_from(raw, 0)
        k = np.frombuffer(raw, dtype=np.uint8, count=c, offset=_Q8_PARAMS.size)
        codes = np.frombuffer(raw, dtype=np.uint8, count=c, offset=_Q8_PARAMS.size + c)
        if not (math.isfinite(g) and math.isfinite(s_max) and g >= 0 and s_max >= 0):
            raise PackingError(f"channel-q8 grid (step {g}, s_max {s_max}) is NaN/inf or negative")
        lo32 = _q8_lo(np.float32(g), z, k)
        scale32 = _q8_scale(np.float32(s_max), codes)
    _check_params_finite(lo32, scale32, levels, f"params section ({mode}) at body offset 0")
    return lo32, scale32


# ---- symbols and floats ---------------------------------------------------------------------


def _quantize_2d(flat: np.ndarray, lo: np.ndarray, scale: np.ndarray, bits: int) -> np.ndarray:
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


def _dequantize_2d(symbols: np.ndarray, lo: np.ndarray, scale: np.ndarray) -> np.ndarray:
    out = symbols.astype(np.float32)
    out *= scale
    out += lo
    return out


def _symbol_section(symbols: np.ndarray, bits: int, layout: str) -> bytes:
    order, arrangement = layout.split("-")
    seq = symbols.T if order == "channel" else symbols
    seq = np.ascontiguousarray(seq).reshape(-1)
    if arrangement == "dense":
        return _bitpack.pack_dense(seq, bits)
    if arrangement == "planes":
        return _bitpack.pack_planes(seq, bits)
    return seq.tobytes()


def _symbols_from_section(raw: bytes, header: Header) -> np.ndarray:
    """(P, C) uint8 symbols from the data section (its size was checked by the caller)."""
    bits, n = header.bits, header.num_elements
    order, arrangement = header.layout.split("-")
    if arrangement == "dense":
        seq = _bitpack.unpack_dense(raw, n, bits)
    elif arrangement == "planes":
        seq = _bitpack.unpack_planes(raw, n, bits)
    else:
        seq = np.frombuffer(raw, dtype=np.uint8, count=n)
        if n and int(seq.max()) > (1 << bits) - 1:
            at = int(np.flatnonzero(seq > (1 << bits) - 1)[0])
            raise PackingError(
                f"symbol {int(seq[at])} at data offset {at} exceeds {(1 << bits) - 1} for bits={bits}"
            )
    return _from_order(seq, header.shape, order)


def _float_section(flat: np.ndarray, bits: int, layout: str) -> bytes:
    if bits == 16 and flat.size and float(np.abs(flat).max()) > _FLOAT16_MAX:
        peak = float(np.abs(flat).max())
        raise PackingError(f"bits=16: |x| up to {peak!r} exceeds float16 (65504); use bits=32")
    order, arrangement = layout.split("-")
    seq = flat.T if order == "channel" else flat
    values = np.ascontiguousarray(seq, dtype=FLOAT_DTYPES[bits]).reshape(-1)
    if arrangement == "planes":  # byte planes: all byte 0s, then all byte 1s, ...
        return np.ascontiguousarray(values.view(np.uint8).reshape(-1, bits // 8).T).tobytes()
    return values.tobytes()


def _floats_from_section(raw: bytes, header: Header) -> np.ndarray:
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
    rows, c = _rows(shape), _channels(shape)
    if order == "channel":
        return np.ascontiguousarray(seq.reshape(c, rows).T)
    return seq.reshape(rows, c)


def _data_nbytes(header: Header) -> int:
    n, bits = header.num_elements, header.bits
    if bits in FLOAT_DTYPES:
        return n * (bits // 8)
    arrangement = header.layout.split("-")[1]
    if arrangement == "dense":
        return _bitpack.dense_nbytes(n, bits)
    if arrangement == "planes":
        return _bitpack.planes_nbytes(n, bits)
    return n


# ---- unpack steps ---------------------------------------------------------------------------


def _as_view(data: object) -> memoryview:
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"expected bytes, bytearray or memoryview, got {type(data).__name__}")
    view = memoryview(data)
    if view.ndim != 1 or view.itemsize != 1:
        view = view.cast("B")
    return view


def _check_header_fields(bits: int, layout_tag: int, params_tag: int, flags: int) -> None:
    allocated = params_tag == PARAMS_TAGS["allocated"]
    if allocated != (bits == MIXED_BITS):
        raise PackingError(f"bits={bits} (offset 5) and params mode tag {params_tag} (offset 7) are "
                           f"inconsistent: bits={MIXED_BITS} goes with 'allocated' and only with it")
    if allocated:
        if layout_tag != LAYOUT_TAGS["channel-dense"]:
            raise PackingError(f"layout tag {layout_tag} (offset 6) is not defined for bits={MIXED_BITS}")
        if flags & ~KNOWN_FLAGS:
            raise PackingError(f"unknown flag bits 0x{flags & ~KNOWN_FLAGS:02x} at offset 8")
        return
    if bits not in BITS:
        raise PackingError(f"unknown bit width at offset 5: {_bits_message(bits)}")
    if layout_tag not in _TAG_LAYOUTS:
        known = sorted(_TAG_LAYOUTS)
        raise PackingError(f"unknown layout tag {layout_tag} at offset 6 (known: {known})")
    layout = _TAG_LAYOUTS[layout_tag]
    if bits in FLOAT_DTYPES and layout not in FLOAT_LAYOUTS:
        raise PackingError(f"layout {layout!r} (offset 6) is not defined for bits={bits}")
    if params_tag not in _TAG_PARAMS:
        known = sorted(_TAG_PARAMS)
        raise PackingError(f"unknown params mode tag {params_tag} at offset 7 (known: {known})")
    mode = _TAG_PARAMS[params_tag]
    if (mode == "none") != (bits in FLOAT_DTYPES):
        raise PackingError(f"params mode {mode!r} (offset 7) is inconsistent with bits={bits}")
    if flags & ~KNOWN_FLAGS:
        raise PackingError(f"unknown flag bits 0x{flags & ~KNOWN_FLAGS:02x} at offset 8")


def _check_lengths(view: memoryview, header: Header) -> None:
    have = len(view) - header.header_length
    if have < header.body_length:
        raise PackingError(
            f"truncated body: header ({header.header_length} B) declares {header.body_length} body "
            f"bytes at offset {header.header_length}, payload has only {have}"
        )
    if have > header.body_length:
        raise PackingError(
            f"{have - header.body_length} trailing bytes after the body, which ends at offset "
            f"{header.total_length}"
        )


def _check_size(header: Header, max_elements: int) -> None:
    n, c = header.num_elements, header.channels
    if n > max_elements or c > max_elements:
        raise PackingError(
            f"payload declares shape {header.shape} ({n} elements, {c} channels), "
            f"above max_elements={max_elements}"
        )


def _decode_body(body: bytes, header: Header, ranges: ChannelRanges | None) -> np.ndarray:
    if header.params == "allocated":
        _check_calibration(header, ranges)
        raw = _decompress_capped(body, _allocated_nbytes(_rows(header.shape), ranges), header)
        return _decode_allocated(raw, header, ranges)
    if header.params == "calibrated":
        _check_calibration(header, ranges)
    params_len = params_nbytes(header.params, header.channels)
    data_len = _data_nbytes(header)
    raw = _decompress_capped(body, params_len + data_len, header)
    if header.bits in FLOAT_DTYPES:
        return _floats_from_section(raw, header).reshape(header.shape)
    lo, scale = _decode_params(raw[:params_len], header, ranges)
    symbols = _symbols_from_section(raw[params_len:], header)
    return _dequantize_2d(symbols, lo, scale).reshape(header.shape)


def _decompress_capped(body: bytes, expected: int, header: Header) -> bytes:
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
