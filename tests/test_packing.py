"""Tests of the activation codec (splitinfer.codec): round trips, error bounds, robustness."""

from __future__ import annotations

import json
import struct
import time
import tracemalloc
import zlib

import brotli
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from splitinfer import codec
from splitinfer.codec import ChannelRanges, PackingError

QBITS = codec.QUANTIZED_BITS
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SHA = "0123456789abcdef" * 4


def relu6_activation(shape=(6, 5, 8), seed=0) -> np.ndarray:
    """Small sparse non-negative activation with a dead channel and a constant channel."""
    rng = np.random.default_rng(seed)
    x = np.clip(rng.normal(-0.3, 1.5, shape), 0, 6).astype(np.float32)
    x[..., 0] = 0.0
    x[..., 1] = 2.5
    return x


def gaussian_activation(shape=(4, 4, 6), seed=1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (rng.normal(0, 1, shape) * rng.lognormal(0, 1, shape[-1]) - 0.5).astype(np.float32)


def as2d(x: np.ndarray) -> np.ndarray:
    """(positions, channels) view in float64; channels = last axis (1 for 0-d)."""
    c = x.shape[-1] if x.ndim else 1
    return x.reshape(int(np.prod(x.shape[:-1])) if x.ndim else 1, c).astype(np.float64)


def assert_within_half_step(x: np.ndarray, y: np.ndarray, q: codec.Quantized) -> None:
    """|x - y| <= scale/2 per channel, plus a few float32 ulps of the values involved."""
    levels = (1 << q.bits) - 1
    xf, yf = as2d(x), as2d(y)
    lo, scale = q.lo.astype(np.float64), q.scale.astype(np.float64)
    tol = 8 * np.finfo(np.float32).eps * (np.abs(lo) + levels * scale + np.abs(xf))
    err = np.abs(xf - yf)
    assert (err <= scale / 2 + tol).all(), (err - scale / 2 - tol).max()


def reseal(data: bytes) -> bytes:
    """Recompute both crc32 fields of a (mutated) payload so mutations reach the decoder.

    Re-derives the header length from the (possibly mutated) fixed fields, following the wire
    format table in the module docstring. Returns the input unchanged if that is impossible.
    """
    if len(data) < 21:
        return data
    params_tag, ndim, name_len = data[7], data[9], data[20]
    referenced = params_tag in (codec.PARAMS_TAGS["calibrated"], codec.PARAMS_TAGS["allocated"])
    tail = 21 + name_len + 4 * ndim + (8 if referenced else 0)
    if len(data) < tail + 12:
        return data
    body = data[tail + 12 :]
    head = data[:tail] + struct.pack("<II", len(body), zlib.crc32(body))
    return head + struct.pack("<I", zlib.crc32(head)) + body


# ---- round trips ------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", codec.BITS)
def test_round_trip_every_bits_and_layout(bits):
    x = relu6_activation()
    layouts = codec.FLOAT_LAYOUTS if bits in codec.FLOAT_DTYPES else codec.LAYOUTS
    for layout in layouts:
        data = codec.pack(x, bits, layout=layout, split="block_3_add", split_index=4, model_sha256=SHA)
        y = codec.unpack(data)
        assert y.dtype == np.float32 and y.shape == x.shape
        header = codec.read_header(data)
        assert header.layout == layout and header.bits == bits
        if bits == 32:
            assert np.array_equal(y, x)
        elif bits == 16:
            assert np.array_equal(y, x.astype(np.float16).astype(np.float32))
        else:
            q = codec.quantize(x, bits)
            assert np.array_equal(y, q.dequantize())  # bit-identical to the reference path
            assert_within_half_step(x, y, q)
            assert np.all(y[..., 0] == 0.0)  # dead ReLU channel stays exactly zero


@pytest.mark.parametrize("bits", QBITS)
@pytest.mark.parametrize("mode", codec.QUANTIZED_PARAMS)
def test_every_params_mode_round_trips(bits, mode):
    x = gaussian_activation()
    ranges = codec.calibrate_ranges(x, percentile=100) if mode == "calibrated" else None
    data = codec.pack(x, bits, params=mode, ranges=ranges)
    assert codec.read_header(data).params == mode
    y = codec.unpack(data, ranges=ranges)
    q = codec.quantize(x, bits, params=mode, ranges=ranges)
    assert np.array_equal(y, q.dequantize())
    assert_within_half_step(x, y, q)


shapes = hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5)
values = st.floats(-1e4, 1e4, width=32, allow_nan=False, allow_infinity=False)


@SETTINGS
@given(
    x=hnp.arrays(np.float32, shapes, elements=values),
    bits=st.sampled_from(QBITS),
    layout=st.sampled_from(codec.LAYOUTS),
    mode=st.sampled_from(("channel-f16", "channel-q8", "tensor", None)),
    constant=st.booleans(),
)
def test_round_trip_error_within_half_step(x, bits, layout, mode, constant):
    if constant and x.size:
        x[..., 0] = x.reshape(-1)[0]  # a constant channel
    if mode == "channel-f16":
        x = np.clip(x, -6e4, 6e4) / 16  # keep ranges inside float16
    q = codec.quantize(x, bits, params=mode)
    y = codec.unpack(codec.pack(x, bits, layout=layout, params=mode))
    assert y.shape == x.shape and y.dtype == np.float32
    assert np.array_equal(y, q.dequantize())
    assert_within_half_step(x, y, q)
    if constant and x.size and q.params != "tensor":
        c0 = y[..., 0].reshape(-1)
        assert np.all(c0 == c0[0])


@SETTINGS
@given(x=hnp.arrays(np.float32, shapes, elements=values), bits=st.sampled_from(QBITS))
def test_calibrated_round_trip_and_clipping(x, bits):
    if x.size == 0:
        return
    ranges = codec.calibrate_ranges(x, percentile=100.0)
    y = codec.unpack(codec.pack(x, bits, ranges=ranges), ranges=ranges)
    q = codec.quantize(x, bits, ranges=ranges)
    assert q.params == "calibrated"
    assert_within_half_step(x, y, q)
    # values beyond the calibrated range clip to its ends
    wide = x * 2 + np.where(x >= 0, 1, -1)
    yw = codec.unpack(codec.pack(wide, bits, ranges=ranges), ranges=ranges)
    span = ((1 << bits) - 1) * q.scale.astype(np.float64)
    top = q.lo.astype(np.float64) + span
    tol = 8 * np.finfo(np.float32).eps * (np.abs(q.lo) + span)
    assert (as2d(yw) <= top + tol).all()
    assert (as2d(yw) >= q.lo - tol).all()


@SETTINGS
@given(x=hnp.arrays(np.float32, shapes, elements=st.floats(-6e4, 6e4, width=32)))
def test_float_widths_exact(x):
    assert np.array_equal(codec.unpack(codec.pack(x, 32)), x)
    assert np.array_equal(codec.unpack(codec.pack(x, 16)), x.astype(np.float16).astype(np.float32))
    bound = codec.error_bound(x, 16)
    err = np.abs(as2d(codec.unpack(codec.pack(x, 16))) - as2d(x))
    assert (err <= bound + 1e-30).all()



@SETTINGS
@given(
    x=hnp.arrays(np.float32, shapes, elements=st.floats(-6e4, 6e4, width=32)),
    bits=st.sampled_from(codec.BITS),
    variant=st.sampled_from(("frame", "channel-f16", "tensor", "calibrated", "clipped")),
    layout=st.sampled_from(codec.LAYOUTS),
)
def test_pack_with_values_is_what_unpack_decodes(x, bits, variant, layout):
    """The profiler trusts these values instead of decoding every payload: bit for bit."""
    kwargs: dict = {"layout": layout if bits in QBITS or layout in codec.FLOAT_LAYOUTS else None}
    ranges = None
    if bits in QBITS and variant == "calibrated" and x.size:
        ranges = kwargs["ranges"] = codec.calibrate_ranges(x, percentile=99.0)
    elif bits in QBITS and variant == "clipped":
        kwargs["clip_sigmas"] = 2.0
    elif bits in QBITS and variant in ("channel-f16", "tensor"):
        kwargs["params"] = variant
        x = x / 16 if variant == "channel-f16" else x
    payload, values = codec.pack_with_values(x, bits, **kwargs)
    assert payload == codec.pack(x, bits, **kwargs)
    expected = codec.unpack(payload, ranges=ranges)
    got = values()
    assert got.dtype == np.float32 and got.shape == expected.shape
    assert np.array_equal(got.view(np.uint32), expected.view(np.uint32))  # -0.0 too


def test_pack_with_values_for_an_allocation():
    x = relu6_activation((5, 4, 6))
    ranges = codec.calibrate_ranges(x[None], percentile=100.0)
    allocation = ChannelRanges(lo=ranges.lo, hi=ranges.hi, bits=np.array([0, 1, 2, 3, 4, 8], np.uint8))
    payload, values = codec.pack_with_values(x, codec.MIXED_BITS, ranges=allocation)
    assert np.array_equal(values(), codec.unpack(payload, ranges=allocation))

def test_float32_is_little_endian_on_the_wire():
    x = np.arange(6, dtype=">f4").reshape(2, 3)  # big-endian input
    data = codec.pack(x, 32, layout="pixel-dense", quality=0)
    raw = brotli.decompress(data[codec.read_header(data).header_length :])
    assert raw == x.astype("<f4").tobytes()
    assert np.array_equal(codec.unpack(data), x.astype(np.float32))


@pytest.mark.parametrize("shape", [(0,), (4, 0), (0, 3), (2, 0, 3), (), (1,), (1, 1, 1, 1)])
@pytest.mark.parametrize("bits", codec.BITS)
def test_edge_shapes(shape, bits):
    """Zero-size and 0-d arrays are supported (0-d is treated as one channel)."""
    x = np.full(shape, 1.5, dtype=np.float32)
    y = codec.unpack(codec.pack(x, bits))
    assert y.shape == shape and y.dtype == np.float32
    np.testing.assert_allclose(y, x, atol=1e-6)


def test_integer_and_float64_inputs_are_converted():
    x = np.arange(24).reshape(2, 3, 4)
    np.testing.assert_array_equal(codec.unpack(codec.pack(x, 32)), x.astype(np.float32))
    bound = codec.error_bound(x.astype(np.float64), 8)
    assert (np.abs(codec.unpack(codec.pack(x.astype(np.float64), 8)) - x) <= bound + 1e-5).all()


# ---- bounds and helpers -----------------------------------------------------------------------


def test_steps_and_error_bound():
    x = gaussian_activation((8, 8, 16))
    f = x.reshape(-1, 16)
    ideal = codec.quantization_step(f.min(0), f.max(0), 4)
    for mode, slack in (("channel-f16", 1.002), ("channel-q8", 1.1), ("tensor", None)):
        q = codec.quantize(x, 4, params=mode)
        bound = codec.error_bound(x, 4, params=mode)
        np.testing.assert_array_equal(bound, q.scale.astype(np.float64) / 2)
        assert (q.step >= ideal * (1 - 1e-6)).all()
        if slack:
            assert (q.step <= ideal * slack).all()
    assert (codec.error_bound(x, 32) == 0).all()
    assert codec.quantization_step(0.0, 3.0, 2) == pytest.approx(1.0)


def test_q8_scale_grid_is_within_one_sixteenth_octave():
    rng = np.random.default_rng(3)
    x = (rng.random((50, 64)) * rng.lognormal(0, 2, 64)).astype(np.float32)
    f = x.reshape(-1, 64)
    hi = f.max(0)
    q = codec.quantize(x, 6, params="channel-q8")
    need = (hi - q.lo.astype(np.float64)) / 63
    assert (q.scale >= need * (1 - 1e-6)).all()
    assert (q.scale <= need * 2 ** (1 / 16) * (1 + 1e-6)).all()


def test_symbol_entropy():
    assert codec.symbol_entropy(np.arange(16, dtype=np.uint8).repeat(10)) == pytest.approx(4.0)
    assert codec.symbol_entropy(np.zeros(10, np.uint8)) == 0.0
    assert codec.symbol_entropy(np.zeros(0, np.uint8)) == 0.0
    with pytest.raises(TypeError):
        codec.symbol_entropy(np.zeros(3, np.float32))
    with pytest.raises(TypeError):
        codec.symbol_entropy(np.zeros(0, np.float32))


def test_auto_params_choice():
    rng = np.random.default_rng(0)
    similar = rng.normal(0, 1, (10, 10, 32)).astype(np.float32)
    assert codec.read_header(codec.pack(similar, 4)).params == "tensor"
    varied = similar * np.logspace(-2, 1, 32, dtype=np.float32)
    assert codec.read_header(codec.pack(varied, 4)).params == "channel-q8"


def test_default_layout_and_header_fields():
    x = relu6_activation()
    for bits in codec.BITS:
        header = codec.read_header(codec.pack(x, bits))
        assert header.layout == codec.DEFAULT_LAYOUT[bits]


# ---- header -----------------------------------------------------------------------------------


def test_read_header_without_decoding_body():
    x = relu6_activation((3, 3, 7))
    data = codec.pack(x, 4, model_sha256=SHA, split="block_16_project_BN", split_index=17)
    header = codec.read_header(data)
    assert header.shape == (3, 3, 7) and header.bits == 4 and header.version == 1
    assert header.split == "block_16_project_BN" and header.split_index == 17
    assert header.model_sha256_prefix == SHA[:16] and header.matches_model(SHA)
    assert header.total_length == len(data) and header.calibration_ref is None
    # header-only prefix and a garbage body still read fine: the body is not touched
    assert codec.read_header(data[: header.header_length]) == header
    garbage = data[: header.header_length] + b"\xff" * header.body_length
    assert codec.read_header(garbage) == header
    with pytest.raises(PackingError, match="body checksum"):
        codec.unpack(garbage)


def test_header_defaults_are_none():
    header = codec.read_header(codec.pack(np.ones(3, np.float32), 8))
    assert header.split is None and header.split_index is None and header.model_sha256_prefix is None


def test_calibrated_header_carries_reference_only():
    x = gaussian_activation((3, 3, 112))
    ranges = codec.calibrate_ranges(x, percentile=100.0)
    data = codec.pack(x, 2, ranges=ranges)
    header = codec.read_header(data)
    assert header.params == "calibrated" and header.calibration_ref == ranges.reference
    with pytest.raises(PackingError, match="pass the same ChannelRanges"):
        codec.unpack(data)
    other = ChannelRanges(lo=ranges.lo, hi=ranges.hi + 1)
    with pytest.raises(PackingError, match="calibration reference mismatch"):
        codec.unpack(data, ranges=other)
    wrong_c = ChannelRanges(lo=np.zeros(3), hi=np.ones(3))
    with pytest.raises(PackingError, match="3 channels"):
        codec.unpack(data, ranges=wrong_c)


def test_ranges_json_round_trip():
    rng = np.random.default_rng(5)
    samples = [rng.normal(0, 1, (4, 4, 10)).astype(np.float32) for _ in range(8)]
    ranges = codec.calibrate_ranges(samples, percentile=99.9)
    back = ChannelRanges.from_json(json.loads(json.dumps(ranges.to_json())))
    assert back == ranges and back.reference == ranges.reference and back.percentile == 99.9
    d = ranges.to_json()
    d["hi"][0] += 1.0
    with pytest.raises(PackingError, match="reference"):
        ChannelRanges.from_json(d)
    with pytest.raises(PackingError, match="version"):
        ChannelRanges.from_json({**ranges.to_json(), "version": 2})
    with pytest.raises(PackingError, match="lo > hi"):
        ChannelRanges(lo=np.ones(2), hi=np.zeros(2))
    with pytest.raises(PackingError, match="NaN"):
        ChannelRanges(lo=np.array([np.nan]), hi=np.ones(1))


def test_calibrate_ranges_percentiles():
    x = np.arange(1000, dtype=np.float32).reshape(1000, 1)
    r100 = codec.calibrate_ranges(x, percentile=100)
    assert r100.lo[0] == 0 and r100.hi[0] == 999
    r99 = codec.calibrate_ranges(x, percentile=99)
    assert 0 < r99.lo[0] < 20 and 980 < r99.hi[0] < 999
    with pytest.raises(PackingError):
        codec.calibrate_ranges(x, percentile=30)
    with pytest.raises(PackingError, match="channel count"):
        codec.calibrate_ranges([np.zeros((2, 3)), np.zeros((2, 4))])


# ---- argument errors ----------------------------------------------------------------------------


def test_unknown_bits_message():
    with pytest.raises(PackingError) as e:
        codec.pack(np.zeros(3, np.float32), 7)
    assert str(e.value) == ("Expected one of {2, 3, 4, 5, 6, 8, 16, 32} (or 1 with an allocation). "
                            "Received: bits=7")
    with pytest.raises(PackingError, match="packs with an allocation"):
        codec.pack(np.zeros(3, np.float32), 1)
    for bad in (9, 64, True, 4.0, "4"):
        with pytest.raises(PackingError, match="Expected one of"):
            codec.pack(np.zeros(3, np.float32), bad)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("bits", [2, 8, 16, 32])
def test_non_finite_input_rejected(bad, bits):
    x = np.ones((2, 3), np.float32)
    x[1, 2] = bad
    with pytest.raises(PackingError, match="non-finite value at flat index 5"):
        codec.pack(x, bits)


def test_float64_overflow_and_float16_range_rejected():
    with pytest.raises(PackingError, match="non-finite"):
        codec.pack(np.array([1e300]), 8)
    with pytest.raises(PackingError, match="float16"):
        codec.pack(np.array([1e5], np.float32), 16)


@pytest.mark.parametrize("x", [np.array(["a", "b"]), np.array([1 + 2j]), np.array([object()]), "abc"])
def test_non_numeric_input_is_type_error(x):
    with pytest.raises(TypeError):
        codec.pack(x, 8)


def test_bad_arguments_rejected():
    x = np.zeros((2, 2), np.float32)
    cases = [
        dict(layout="diagonal"),
        dict(bits=16, layout="pixel-bytes"),
        dict(quality=12),
        dict(split_index=70000),
        dict(model_sha256="xyz"),
        dict(split="n" * 300),
        dict(params="per-pixel"),
        dict(params="calibrated"),
        dict(params="tensor", ranges=ChannelRanges(lo=np.zeros(2), hi=np.ones(2))),
        dict(ranges=ChannelRanges(lo=np.zeros(3), hi=np.ones(3))),
    ]
    for kwargs in cases:
        bits = kwargs.pop("bits", 4)
        with pytest.raises(PackingError):
            codec.pack(x, bits, **kwargs)


# ---- corrupt payloads ---------------------------------------------------------------------------


def sample_payloads() -> list[tuple[bytes, ChannelRanges | None]]:
    x = relu6_activation((3, 3, 5))
    ranges = codec.calibrate_ranges(x, percentile=100)
    out = [(codec.pack(x, b, split="s", split_index=1, model_sha256=SHA), None) for b in codec.BITS]
    out += [(codec.pack(x, 3, params=m), None) for m in ("channel-f16", "channel-q8", "tensor")]
    out.append((codec.pack(x, 4, ranges=ranges), ranges))
    widths = np.array([0, 1, 3, 8, 2])
    allocation = ChannelRanges(lo=ranges.lo, hi=ranges.hi, bits=widths)
    out.append((codec.pack(x, codec.MIXED_BITS, ranges=allocation, split_index=2), allocation))
    return out


def test_every_truncation_raises_packing_error():
    for data, ranges in sample_payloads():
        for cut in range(len(data)):
            with pytest.raises(PackingError):
                codec.unpack(data[:cut], ranges=ranges)


def test_trailing_bytes_rejected():
    data, _ = sample_payloads()[0]
    with pytest.raises(PackingError, match="trailing"):
        codec.unpack(data + b"\0")


PAYLOADS = sample_payloads()


@FUZZ
@given(which=st.integers(0, len(PAYLOADS) - 1), where=st.floats(0, 1, exclude_max=True),
       mask=st.integers(1, 255), resealed=st.booleans())
def test_byte_flips_never_crash(which, where, mask, resealed):
    """A flipped byte raises PackingError, or (if it only touched something unused) decodes the
    same; with resealed checksums the flip reaches the parser and decoder, which may also return
    a different but well-formed array."""
    data, ranges = PAYLOADS[which]
    reference = codec.unpack(data, ranges=ranges)
    i = int(where * len(data))
    bad = bytearray(data)
    bad[i] ^= mask
    bad = reseal(bytes(bad)) if resealed else bytes(bad)
    try:
        y = codec.unpack(bad, ranges=ranges)
    except PackingError:
        return
    if not resealed:  # only possible if the flip hit nothing that matters
        assert np.array_equal(y, reference)
    header = codec.read_header(bad)
    assert y.dtype == np.float32 and y.shape == header.shape
    assert np.isfinite(y).all()


@FUZZ
@given(
    tail=st.binary(max_size=80),
    bits=st.sampled_from(codec.BITS),
    layout=st.integers(0, 7),
    params=st.integers(0, 6),
    ndim=st.integers(0, 9),
)
def test_garbage_after_a_plausible_prefix_never_crashes(tail, bits, layout, params, ndim):
    """Resealed random headers/bodies: PackingError or a well-formed array, nothing else."""
    data = reseal(struct.pack("<4sBBBBBB", b"SIAC", 1, bits, layout, params, 0, ndim) + tail)
    try:
        y = codec.unpack(data, max_elements=1 << 16)
    except PackingError:
        return
    assert y.dtype == np.float32 and np.isfinite(y).all()


def test_header_fields_validated_with_precise_messages():
    data, _ = PAYLOADS[2]  # 4 bits
    def patched(offset: int, value: int) -> bytes:
        b = bytearray(data)
        b[offset] = value
        return reseal(bytes(b))
    with pytest.raises(PackingError, match="bad magic at offset 0"):
        codec.unpack(b"XXXX" + data[4:])
    with pytest.raises(PackingError, match="unsupported format version 9 at offset 4"):
        codec.unpack(patched(4, 9))
    with pytest.raises(PackingError, match=r"offset 5: Expected one of .* Received: bits=7"):
        codec.unpack(patched(5, 7))
    with pytest.raises(PackingError, match="unknown layout tag 99 at offset 6"):
        codec.unpack(patched(6, 99))
    with pytest.raises(PackingError, match="unknown params mode tag 77 at offset 7"):
        codec.unpack(patched(7, 77))
    with pytest.raises(PackingError, match="unknown flag bits 0x80 at offset 8"):
        codec.unpack(patched(8, 0x81))
    with pytest.raises(PackingError, match="header checksum mismatch"):
        codec.unpack(bytes([*data[:5], 2, *data[6:]]))
    with pytest.raises(PackingError, match="truncated header"):
        codec.unpack(data[:10])


def test_shape_and_body_size_inconsistency():
    x = np.ones((4, 4, 4), np.float32)
    data = bytearray(codec.pack(x, 8))
    header = codec.read_header(bytes(data))
    dims_at = 21 + len(header.split or "")
    struct.pack_into("<I", data, dims_at, 5)  # claim 5x4x4: the body is too short for it
    message = r"decompresses to 72 bytes, expected 88 for shape \(5, 4, 4\)"
    with pytest.raises(PackingError, match=message):
        codec.unpack(reseal(bytes(data)))


def test_nan_parameters_rejected():
    x = np.ones((2, 3), np.float32) * np.arange(3)
    data = codec.pack(x, 4, params="tensor", layout="pixel-bytes")
    header = codec.read_header(data)
    raw = bytearray(brotli.decompress(data[header.header_length :]))
    struct.pack_into("<f", raw, 4, float("nan"))  # scale
    forged = data[: header.header_length] + brotli.compress(bytes(raw))
    with pytest.raises(PackingError, match="NaN/inf"):
        codec.unpack(reseal(forged))
    raw[8] = 200  # a symbol > 15 in the one-byte-per-symbol layout
    struct.pack_into("<f", raw, 4, 1.0)
    forged = data[: header.header_length] + brotli.compress(bytes(raw))
    with pytest.raises(PackingError, match="symbol 200 at data offset 0 exceeds 15"):
        codec.unpack(reseal(forged))


def forge(shape: tuple[int, ...], bits: int, body: bytes, layout: str = "pixel-dense") -> bytes:
    """A payload whose header says `shape`/`bits` around an arbitrary (valid-crc) body."""
    head = struct.pack(
        "<4sBBBBBBH8sB", b"SIAC", 1, bits, codec.LAYOUT_TAGS[layout], 0, 0, len(shape), 0xFFFF,
        bytes(8), 0,
    )
    head += struct.pack(f"<{len(shape)}I", *shape) + struct.pack("<II", len(body), zlib.crc32(body))
    return head + struct.pack("<I", zlib.crc32(head)) + body


def test_decompression_bomb_is_stopped_quickly_with_bounded_memory():
    compressor = brotli.Compressor(quality=1)
    chunk = bytes(1 << 20)
    bomb = b"".join(compressor.process(chunk) for _ in range(256)) + compressor.finish()
    assert len(bomb) < 64 << 10  # 256 MiB of zeros in a few KiB
    payload = forge((256, 4), 32, bomb)  # header claims 4 KiB of float32
    tracemalloc.start()
    t = time.perf_counter()
    try:
        with pytest.raises(PackingError, match="decompression bomb"):
            codec.unpack(payload)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - t < 1.0
    assert peak < 8 << 20, peak


def test_max_elements_checked_before_decompressing():
    payload = forge((1 << 16, 1 << 14), 32, brotli.compress(b""))  # 2**30 elements claimed
    with pytest.raises(PackingError, match="above max_elements"):
        codec.unpack(payload)
    small = codec.pack(np.zeros((10, 10), np.float32), 4)
    with pytest.raises(PackingError, match="max_elements=50"):
        codec.unpack(small, max_elements=50)


def test_corrupt_brotli_stream_with_valid_crc():
    payload = forge((4, 4), 32, b"\x1b\xff\xff\xff not brotli")
    with pytest.raises(PackingError, match="brotli"):
        codec.unpack(payload)


def test_unpack_rejects_non_bytes():
    with pytest.raises(TypeError):
        codec.unpack("not bytes")
    assert codec.unpack(memoryview(codec.pack(np.ones(2, np.float32), 32))).tolist() == [1.0, 1.0]


@settings(max_examples=60, deadline=None)
@given(rows=st.integers(1, 3000), channels=st.integers(1, 300), seed=st.integers(0, 2**32 - 1))
def test_fast_channel_min_max_equals_numpy(rows, channels, seed):
    from splitinfer.codec.ranges import channel_min_max as _channel_min_max

    flat = np.random.default_rng(seed).normal(size=(rows, channels)).astype(np.float32)
    lo, hi = _channel_min_max(flat)
    assert np.array_equal(lo, flat.min(axis=0)) and np.array_equal(hi, flat.max(axis=0))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.integers(2, 400), channels=st.integers(1, 40), sigmas=st.floats(0.5, 6.0),
       bits=st.sampled_from([2, 3, 4]), seed=st.integers(0, 2**32 - 1))
def test_clipped_ranges_stay_inside_min_max_and_values_inside_them_round_trip(rows, channels,
                                                                            sigmas, bits, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_t(3, size=(rows, channels)) * rng.uniform(0.01, 100, channels)
         + rng.uniform(-50, 50, channels)).astype(np.float32)
    lo, hi = codec.clip_range(x, x.min(0).astype(np.float64), x.max(0).astype(np.float64), sigmas)
    assert np.all(lo >= x.min(0) - 1e-6) and np.all(hi <= x.max(0) + 1e-6) and np.all(hi >= lo)
    q = codec.quantize(x, bits, params="channel-f16", clip_sigmas=sigmas)
    back = codec.unpack(codec.pack(x, bits, params="channel-f16", clip_sigmas=sigmas))
    assert np.array_equal(back, q.dequantize())
    inside = (x >= lo) & (x <= hi)
    err = np.abs(back.astype(np.float64) - x)
    bound = q.error_bound[None, :] * (1 + 1e-5) + 1e-6 * np.abs(x)
    assert np.all(err[inside] <= np.broadcast_to(bound, x.shape)[inside])
    top = q.lo.astype(np.float64) + ((1 << bits) - 1) * q.scale.astype(np.float64)
    assert np.all(back >= q.lo - 1e-6) and np.all(back <= top + 1e-3 * np.abs(top) + 1e-6)


def test_variant_kwargs_name_the_pack_arguments_of_each_profile_variant():
    ranges = ChannelRanges(lo=np.zeros(3, np.float32), hi=np.ones(3, np.float32))
    assert codec.variant_kwargs("frame", 2, ranges) == {}
    assert codec.variant_kwargs("clipped", 2, ranges) == {"clip_sigmas": codec.CLIP_SIGMAS[2]}
    assert codec.variant_kwargs("clipped", 8, ranges) == {}  # no clip defined: per-frame
    assert codec.variant_kwargs("calibrated", 4, ranges) == {"ranges": ranges}
    assert codec.variant_kwargs("calibrated", 4, None) == {}
    assert codec.variant_kwargs("calibrated", 16, ranges) == {}
    with pytest.raises(PackingError, match="clipped"):
        codec.variant_kwargs("clip", 2, ranges)
    with pytest.raises(PackingError, match="clip_sigmas"):
        codec.pack(np.ones((4, 3), np.float32), 2, clip_sigmas=0.0)


# ---- per-channel allocation (bits = MIXED_BITS) ---------------------------------------------


@SETTINGS
@given(data=st.data(), rows=st.integers(1, 40), channels=st.integers(1, 24))
def test_allocated_round_trip_within_half_step_per_channel(data, rows, channels):
    x = data.draw(hnp.arrays(np.float32, (rows, channels), elements=st.floats(-50, 50, width=32)))
    widths = np.array(data.draw(st.lists(st.integers(0, codec.MAX_CHANNEL_BITS), min_size=channels,
                                         max_size=channels)))
    lo, hi = x.min(axis=0), x.max(axis=0)
    narrow = data.draw(st.booleans())  # a calibrated range can be narrower than this frame
    if narrow:
        lo, hi = lo + 0.25 * (hi - lo), hi - 0.25 * (hi - lo)
    allocation = ChannelRanges(lo=lo, hi=hi, bits=widths)
    payload = codec.pack(x, codec.MIXED_BITS, ranges=allocation, model_sha256=SHA, split_index=4)
    header = codec.read_header(payload)
    assert (header.bits, header.params, header.layout) == (codec.MIXED_BITS, "allocated", "channel-dense")
    assert header.calibration_ref == allocation.reference
    y = codec.unpack(payload, ranges=allocation)
    assert y.shape == x.shape and y.dtype == np.float32
    lo64, hi64 = allocation.lo.astype(np.float64), allocation.hi.astype(np.float64)
    for c in range(channels):
        if widths[c] == 0:  # sent as nothing, decoded as lo
            assert (y[:, c] == allocation.lo[c]).all()
            continue
        scale = np.float64(codec.params.round_up(np.array([(hi64[c] - lo64[c]) / ((1 << widths[c]) - 1)]),
                                             np.float32)[0])
        want = np.clip(x[:, c].astype(np.float64), lo64[c], lo64[c] + scale * ((1 << widths[c]) - 1))
        tol = 8 * np.finfo(np.float32).eps * (np.abs(lo64[c]) + np.abs(hi64[c]) + np.abs(want) + scale)
        assert (np.abs(y[:, c] - want) <= scale / 2 + tol).all()


def test_allocated_payload_size_follows_the_widths():
    x = np.zeros((100, 4), np.float32)
    allocation = ChannelRanges(lo=np.zeros(4), hi=np.ones(4), bits=np.array([0, 1, 4, 8]))
    raw_bytes = (100 * 1 + 7) // 8 + (100 * 4 + 7) // 8 + 100
    # zeros compress to almost nothing: check the decompressed size through the cap instead
    payload = codec.pack(x, codec.MIXED_BITS, ranges=allocation, quality=0)
    assert brotli.decompress(payload[codec.read_header(payload).header_length:]).__len__() == raw_bytes
    assert allocation.mean_bits == pytest.approx(13 / 4)


def test_allocations_are_checked_on_both_sides():
    x = relu6_activation((3, 3, 5))
    lo, hi = np.zeros(5, np.float32), np.full(5, 6.0, np.float32)
    allocation = ChannelRanges(lo=lo, hi=hi, bits=np.array([0, 1, 2, 3, 4]))
    plain = ChannelRanges(lo=lo, hi=hi)
    assert plain.reference != allocation.reference and plain.mean_bits is None
    other = ChannelRanges(lo=lo, hi=hi, bits=np.array([0, 1, 2, 3, 5]))
    assert other.reference != allocation.reference
    payload = codec.pack(x, codec.MIXED_BITS, ranges=allocation)
    with pytest.raises(PackingError, match="pass an allocation"):
        codec.unpack(payload, ranges=plain)
    with pytest.raises(PackingError, match="pass the same"):
        codec.unpack(payload)
    with pytest.raises(PackingError, match="reference mismatch"):
        codec.unpack(payload, ranges=other)
    with pytest.raises(PackingError, match="plain ranges"):
        codec.unpack(codec.pack(x, 4, ranges=plain), ranges=allocation)
    for bad in (dict(), dict(ranges=plain), dict(ranges=allocation, layout="channel-bytes"),
                dict(ranges=allocation, params="tensor")):
        with pytest.raises(PackingError):
            codec.pack(x, codec.MIXED_BITS, **bad)
    with pytest.raises(PackingError, match="only at bits=1"):
        codec.pack(x, 4, ranges=allocation)
    with pytest.raises(PackingError, match="allocation bits"):
        ChannelRanges(lo=lo, hi=hi, bits=np.array([0, 1, 2, 3, 9]))
    with pytest.raises(PackingError, match="allocation bits"):
        ChannelRanges(lo=lo, hi=hi, bits=np.array([0, 1, 2]))
    assert ChannelRanges.from_json(allocation.to_json()) == allocation
    assert ChannelRanges.from_json(plain.to_json()) != allocation
    assert codec.variant_kwargs("allocated", codec.MIXED_BITS, allocation) == {"ranges": allocation}
    with pytest.raises(PackingError, match="allocated"):
        codec.variant_kwargs("allocated", codec.MIXED_BITS, plain)


def test_mixed_bits_header_must_say_allocated_and_back():
    x = relu6_activation((3, 3, 5))
    allocation = ChannelRanges(lo=np.zeros(5), hi=np.full(5, 6.0), bits=np.array([0, 1, 2, 3, 4]))
    payload = bytearray(codec.pack(x, codec.MIXED_BITS, ranges=allocation))
    payload[7] = codec.PARAMS_TAGS["calibrated"]
    with pytest.raises(PackingError, match="inconsistent"):
        codec.read_header(reseal(bytes(payload)))
    calibrated = bytearray(codec.pack(x, 2, ranges=ChannelRanges(lo=np.zeros(5), hi=np.full(5, 6.0))))
    calibrated[7] = codec.PARAMS_TAGS["allocated"]
    with pytest.raises(PackingError, match="inconsistent"):
        codec.read_header(reseal(bytes(calibrated)))
