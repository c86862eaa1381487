"""The payload header: magic, version, tag tables, field checks and both CRCs.

The wire table is in docs/FORMATS.md (its only copy); `read_header` parses it without
touching the body, so a server can route or refuse a payload before decoding it.
"""
from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass

import numpy as np

from splitinfer.errors import PackingError

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
DEFAULT_MAX_ELEMENTS = 1 << 24  # 16 Mi elements = 64 MiB of float32 output
MAX_NDIM = 8
MAX_SPLIT_NAME_BYTES = 255
NO_SPLIT_INDEX = 0xFFFF
SHA_PREFIX_BYTES = 8
CALIBRATION_REF_BYTES = 8
FLAG_MODEL_SHA = 0x01
KNOWN_FLAGS = FLAG_MODEL_SHA
FIXED_HEADER = struct.Struct("<4sBBBBBBH8sB")  # magic .. split-name length
HEADER_TAIL = struct.Struct("<III")  # body length, body crc32, header crc32


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


def assemble(bits: int, layout: str, mode: str, has_sha: bool, shape: tuple[int, ...], index: int,
              sha: bytes, name: bytes, calibration_ref: bytes, body: bytes) -> bytes:
    """Header (with both checksums) + body."""
    flags = FLAG_MODEL_SHA if has_sha else 0
    head = FIXED_HEADER.pack(
        MAGIC, FORMAT_VERSION, bits, LAYOUT_TAGS[layout], PARAMS_TAGS[mode], flags, len(shape),
        index, sha, len(name),
    )
    head += name + struct.pack(f"<{len(shape)}I", *shape) + calibration_ref
    head += struct.pack("<II", len(body), zlib.crc32(body))
    head += struct.pack("<I", zlib.crc32(head))
    return head + body


def is_mixed(bits: object) -> bool:
    return not isinstance(bits, bool) and isinstance(bits, (int, np.integer)) and int(bits) == MIXED_BITS


def read_header(data: bytes | bytearray | memoryview) -> Header:
    """Parse and check the header (magic, version, tags, shape, header crc32); body untouched."""
    view = as_view(data)
    size = len(view)
    if size < FIXED_HEADER.size:
        raise PackingError(
            f"truncated header: need at least {FIXED_HEADER.size} bytes at offset 0, payload has {size}"
        )
    magic, version, bits, layout_tag, params_tag, flags, ndim, index, sha, name_len = (
        FIXED_HEADER.unpack_from(view, 0)
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
    dims_at = FIXED_HEADER.size + name_len
    ref_at = dims_at + 4 * ndim
    tail_at = ref_at + (CALIBRATION_REF_BYTES if calibrated else 0)
    header_length = tail_at + HEADER_TAIL.size
    if size < header_length:
        raise PackingError(
            f"truncated header: split name ({name_len} B) and shape (ndim={ndim}) need "
            f"{header_length} header bytes, payload has {size}"
        )
    body_length, body_crc, header_crc = HEADER_TAIL.unpack_from(view, tail_at)
    crc = zlib.crc32(view[: header_length - 4])
    if crc != header_crc:
        raise PackingError(
            f"header checksum mismatch at offset {header_length - 4}: stored 0x{header_crc:08x}, "
            f"header bytes 0..{header_length - 5} give 0x{crc:08x}"
        )
    _check_header_fields(bits, layout_tag, params_tag, flags)
    try:
        split = bytes(view[FIXED_HEADER.size : dims_at]).decode("utf-8") if name_len else None
    except UnicodeDecodeError as e:
        raise PackingError(f"split name at offset {FIXED_HEADER.size} is not UTF-8: {e}") from None
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


_TAG_LAYOUTS = {tag: name for name, tag in LAYOUT_TAGS.items()}
_TAG_PARAMS = {tag: name for name, tag in PARAMS_TAGS.items()}


def _bits_message(bits: object) -> str:
    allowed = "{" + ", ".join(str(b) for b in BITS) + "}"
    return f"Expected one of {allowed} (or {MIXED_BITS} with an allocation). Received: bits={bits!r}"


def check_bits(bits: object) -> int:
    if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)) or int(bits) not in BITS:
        raise PackingError(_bits_message(bits))
    return int(bits)


def as_float32(x: object) -> np.ndarray:
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


def channel_count(shape: tuple[int, ...]) -> int:
    return int(shape[-1]) if len(shape) else 1


def row_count(shape: tuple[int, ...]) -> int:
    return math.prod(shape[:-1]) if len(shape) else 1


def check_shape_for_wire(shape: tuple[int, ...]) -> None:
    if len(shape) > MAX_NDIM:
        raise PackingError(f"ndim {len(shape)} exceeds the maximum of {MAX_NDIM}")
    if any(d > 0xFFFFFFFF for d in shape):
        raise PackingError(f"shape {shape} has a dimension beyond 2**32 - 1")


def sha_prefix(model_sha256: str | None) -> bytes:
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


def split_name_bytes(split: str | None) -> bytes:
    if split is None:
        return b""
    name = split.encode("utf-8")
    if len(name) > MAX_SPLIT_NAME_BYTES:
        raise PackingError(
            f"split name is {len(name)} UTF-8 bytes, the maximum is {MAX_SPLIT_NAME_BYTES}"
        )
    return name


def split_index_field(split_index: int | None) -> int:
    if split_index is None:
        return NO_SPLIT_INDEX
    if isinstance(split_index, bool) or not isinstance(split_index, (int, np.integer)) or not (
        0 <= split_index < NO_SPLIT_INDEX
    ):
        raise PackingError(f"split_index must be in 0..{NO_SPLIT_INDEX - 1}. Received: {split_index!r}")
    return int(split_index)


def as_view(data: object) -> memoryview:
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


def check_lengths(view: memoryview, header: Header) -> None:
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


def check_size(header: Header, max_elements: int) -> None:
    n, c = header.num_elements, header.channels
    if n > max_elements or c > max_elements:
        raise PackingError(
            f"payload declares shape {header.shape} ({n} elements, {c} channels), "
            f"above max_elements={max_elements}"
        )


FLOAT16_MAX = 65504.0
