"""Activation codec: quantize, bit-pack and brotli-compress a split tensor for the uplink.

The edge packs the head's output with `pack`; the cloud reads it back with `unpack` (both sides
import this package, so it uses only the standard library, numpy and brotli). `read_header` reads
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

Wire format: docs/FORMATS.md holds the table (the only copy). Modules: `header` (magic, tags,
CRCs), `ranges` (calibration, clipping, variants), `params` (where lo and scale come from),
`quantize`, `layout` (element order, bit packing via `bitpack`), `compress` (brotli, capped
decode), `allocated` (per-channel widths), `payload` (`pack`, `unpack`).
"""
from __future__ import annotations

from splitinfer.codec.compress import (
    BROTLI_MODE,
    DEFAULT_QUALITY,
    SMALL_SECTION_BYTES,
    SMALL_SECTION_QUALITY,
    default_quality,
)
from splitinfer.codec.header import (
    BITS,
    DEFAULT_MAX_ELEMENTS,
    FLOAT_DTYPES,
    FLOAT_LAYOUTS,
    FORMAT_VERSION,
    LAYOUT_TAGS,
    LAYOUTS,
    MAGIC,
    MAX_CHANNEL_BITS,
    MIXED_BITS,
    PARAMS_MODES,
    PARAMS_TAGS,
    QUANTIZED_BITS,
    QUANTIZED_PARAMS,
    REFERENCED_PARAMS,
    Header,
    read_header,
)
from splitinfer.codec.layout import (
    DEFAULT_LAYOUT,
)
from splitinfer.codec.params import (
    params_nbytes,
)
from splitinfer.codec.payload import (
    pack,
    pack_with_values,
    unpack,
)
from splitinfer.codec.quantize import (
    Quantized,
    dequantize,
    error_bound,
    quantization_step,
    quantize,
    symbol_entropy,
)
from splitinfer.codec.ranges import (
    CLIP_SIGMAS,
    PROFILE_VARIANTS,
    ChannelRanges,
    calibrate_ranges,
    clip_range,
    variant_kwargs,
)
from splitinfer.errors import PackingError

__all__ = [
    "BITS",
    "BROTLI_MODE",
    "CLIP_SIGMAS",
    "ChannelRanges",
    "DEFAULT_LAYOUT",
    "DEFAULT_MAX_ELEMENTS",
    "DEFAULT_QUALITY",
    "FLOAT_DTYPES",
    "FLOAT_LAYOUTS",
    "FORMAT_VERSION",
    "Header",
    "LAYOUTS",
    "LAYOUT_TAGS",
    "MAGIC",
    "MAX_CHANNEL_BITS",
    "MIXED_BITS",
    "PARAMS_MODES",
    "PARAMS_TAGS",
    "PROFILE_VARIANTS",
    "PackingError",
    "QUANTIZED_BITS",
    "QUANTIZED_PARAMS",
    "Quantized",
    "REFERENCED_PARAMS",
    "SMALL_SECTION_BYTES",
    "SMALL_SECTION_QUALITY",
    "calibrate_ranges",
    "clip_range",
    "default_quality",
    "dequantize",
    "error_bound",
    "pack",
    "pack_with_values",
    "params_nbytes",
    "quantization_step",
    "quantize",
    "read_header",
    "symbol_entropy",
    "unpack",
    "variant_kwargs",
]
