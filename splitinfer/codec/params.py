"""Where lo and scale come from: per tensor, per channel (float16 or the q8 grid), calibrated.

Every mode rounds scale *up* to what the decoder will read, so the error bound holds bit for
bit on both sides; see the package docstring for what each mode costs.
"""
from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from splitinfer.codec.header import (
    FLOAT16_MAX,
    PARAMS_MODES,
    PARAMS_TAGS,
    QUANTIZED_PARAMS,
    Header,
)
from splitinfer.codec.ranges import ChannelRanges, channel_min_max, clip_range
from splitinfer.errors import PackingError

#: `tensor` is chosen automatically when at least this share of the non-constant channels has a
#: per-channel range >= TENSOR_AUTO_RATIO x the tensor's range (per-channel would gain at most
#: one bit of resolution there, e.g. i.i.d.-like channels whose ranges differ only by noise).
TENSOR_AUTO_RATIO = 0.5
TENSOR_AUTO_SHARE = 0.9
#: channel-q8 scale grid: scale = s_max * 2**(-code / 16), code 255 means scale 0.
Q8_SCALE_STEPS_PER_OCTAVE = 16
Q8_ZERO_SCALE_CODE = 255
Q8_LO_STEPS = 254  # one code of slack so that zero stays on the grid
_TENSOR_PARAMS = struct.Struct("<ff")  # lo, scale
_Q8_PARAMS = struct.Struct("<ffB")  # lo grid step, s_max, zero code


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


def resolve_params(params: str | None, ranges: ChannelRanges | None, bits: int) -> str:
    """Explicit mode, or None: calibrated if ranges are given, else decided in fit_params."""
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


def fit_params(flat: np.ndarray, bits: int, mode: str, ranges: ChannelRanges | None,
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
        lo, hi = (v.astype(np.float64) for v in channel_min_max(flat))
        if clip_sigmas is not None:
            lo, hi = clip_range(flat, lo, hi, clip_sigmas)
    if mode == "auto":
        mode = "tensor" if _tensor_is_enough(lo, hi) else "channel-q8"
    if mode == "tensor":
        return _tensor_params(lo, hi, levels, c)
    if mode == "channel-f16":
        return _f16_params(lo, hi, levels)
    return _q8_params(lo, hi, levels)


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
    scale = round_up((ranges.hi.astype(np.float64) - ranges.lo.astype(np.float64)) / levels, np.float32)
    check_params_finite(lo, scale, levels, "calibrated ranges")
    return lo, scale


def _tensor_params(lo: np.ndarray, hi: np.ndarray, levels: int, c: int) -> _Params:
    t_lo = np.float32(lo.min()) if lo.size else np.float32(0)
    t_hi = float(hi.max()) if hi.size else 0.0
    scale = round_up(np.array([(t_hi - float(t_lo)) / levels]), np.float32)[0]
    lo32 = np.full(c, t_lo, dtype=np.float32)
    scale32 = np.full(c, scale, dtype=np.float32)
    check_params_finite(lo32[:1], scale32[:1], levels, "tensor range")
    section = _TENSOR_PARAMS.pack(float(t_lo), float(scale))
    return _Params(mode="tensor", lo=lo32, scale=scale32, section=section)


def _f16_params(lo: np.ndarray, hi: np.ndarray, levels: int) -> _Params:
    if lo.size and (np.abs(lo).max() > FLOAT16_MAX or (hi - lo).max() / levels > FLOAT16_MAX):
        raise PackingError("channel ranges exceed float16; use params='channel-q8' or 'tensor'")
    lo16 = _round_down(lo, np.float16)
    scale16 = round_up((hi - lo16.astype(np.float64)) / levels, np.float16)
    if not (np.isfinite(lo16).all() and np.isfinite(scale16).all()):
        raise PackingError("channel ranges exceed float16; use params='channel-q8' or 'tensor'")
    section = lo16.astype("<f2").tobytes() + scale16.astype("<f2").tobytes()
    lo32, scale32 = lo16.astype(np.float32), scale16.astype(np.float32)
    check_params_finite(lo32, scale32, levels, "channel ranges")
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
    check_params_finite(lo_dec, scale_dec, levels, "channel ranges")
    section = _Q8_PARAMS.pack(g, s_max, z) + k.tobytes() + codes.tobytes()
    return _Params(mode="channel-q8", lo=lo_dec, scale=scale_dec, section=section)


def _q8_lo(g: np.float32, z: int, k: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):  # overflow is caught by the finite check
        return (np.float32(g) * (k.astype(np.float32) - np.float32(z))).astype(np.float32)


def _q8_scale(s_max: np.float32, codes: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore", invalid="ignore"):
        return (np.float32(s_max) * _Q8_SCALE_TABLE[codes]).astype(np.float32)


def round_up(values: np.ndarray, dtype: type[np.floating]) -> np.ndarray:
    """Cast to `dtype`, nudging each value up one ulp where the cast rounded it down."""
    with np.errstate(over="ignore"):
        out = np.asarray(values, dtype=np.float64).astype(dtype)
    low = out.astype(np.float64) < values
    out[low] = np.nextafter(out[low], dtype(np.inf))
    return out


def _f32_up(value: float) -> float:
    """`round_up` of one Python float to float32, without the array round trip (it is called
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


def check_params_finite(lo: np.ndarray, scale: np.ndarray, levels: int, what: str) -> None:
    """lo, scale and the top of the range lo + levels * scale must be finite float32, scale >= 0."""
    with np.errstate(over="ignore", invalid="ignore"):
        top = lo.astype(np.float32) + np.float32(levels) * scale.astype(np.float32)
        ok = np.isfinite(lo).all() and np.isfinite(scale).all() and np.isfinite(top).all()
    if not ok:
        raise PackingError(f"{what}: quantization parameters are NaN/inf or overflow float32")
    if (scale < 0).any():
        raise PackingError(f"{what}: negative quantization scale")


def check_calibration(header: Header, ranges: ChannelRanges | None) -> None:
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


def decode_params(
    raw: bytes, header: Header, ranges: ChannelRanges | None
) -> tuple[np.ndarray, np.ndarray]:
    """lo/scale per channel from the decompressed params section; PackingError if unusable."""
    c = header.channels
    levels = (1 << header.bits) - 1
    mode = header.params
    if mode == "calibrated":
        check_calibration(header, ranges)
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
    check_params_finite(lo32, scale32, levels, f"params section ({mode}) at body offset 0")
    return lo32, scale32
