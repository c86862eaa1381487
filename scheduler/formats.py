"""Thin readers for the bundle files the scheduler needs (docs/FORMATS.md).

Standard library json only: the scheduler runs on the board and in the simulator, neither of
which may import TensorFlow or the converter. Each reader keeps only the fields the scheduler
uses and rejects versions it does not know.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROFILE_VERSION = 1
DEVICE_PROFILE_VERSION = 1
INPUT_SPLIT = "input"
FULL = "full"


class FormatError(ValueError):
    """A bundle file is missing, malformed or of a version this build does not read."""


@dataclass(frozen=True)
class SplitInfo:
    name: str
    index: int
    shape: tuple[int, ...]
    head_flops: int
    tail_flops: int


@dataclass(frozen=True)
class ManifestInfo:
    model_name: str
    input_shape: tuple[int, ...]
    full_flops: int
    splits: tuple[SplitInfo, ...]

    def split(self, name: str) -> SplitInfo:
        for s in self.splits:
            if s.name == name:
                return s
        raise KeyError(f"split {name!r} is not in the manifest: expected one of "
                       f"{[s.name for s in self.splits]}")


@dataclass(frozen=True)
class ConfigProfile:
    """One (split, bits) row of profile.json."""

    split: str
    bits: int
    drop_pp: float
    bytes_mean: float
    bytes_p95: float
    pack_ms: float
    unpack_ms: float


@dataclass(frozen=True)
class JpegProfile:
    quality: int
    bytes_mean: float
    bytes_p95: float
    drop_pp: float
    encode_ms: float | None   # optional; not in FORMATS.md v1, used when present
    decode_ms: float | None


@dataclass(frozen=True)
class Profile:
    float_top1: float
    jpeg: JpegProfile
    tail_ms: dict[str, float]
    configs: tuple[ConfigProfile, ...]


@dataclass(frozen=True)
class DeviceProfile:
    device: str
    num_threads: int
    full_ms: float
    heads_ms: dict[str, float]


def _read_json(path: Path, what: str, fix: str) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FormatError(f"{what} not found at {path}: {fix}")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise FormatError(f"{what} at {path} is not valid JSON ({e}): {fix}") from None
    if not isinstance(data, dict):
        raise FormatError(f"{what} at {path} should be a JSON object, got {type(data).__name__}")
    return data


def _check_version(data: dict[str, Any], expected: int, path: Path, fix: str) -> None:
    got = data.get("version")
    if got != expected:
        raise FormatError(f"{path}: version {got!r} is not supported, this build reads version "
                          f"{expected}; {fix}")


def _field(data: dict[str, Any], key: str, path: Path) -> Any:
    try:
        return data[key]
    except KeyError:
        raise FormatError(f"{path}: missing field {key!r} (see docs/FORMATS.md)") from None


def load_manifest(path: Path) -> ManifestInfo:
    """The fields the scheduler uses, read by the one manifest reader (edge_runtime.manifest)."""
    from edge_runtime.manifest import BundleError, load_manifest as read_manifest

    path = Path(path)
    if path.name != "manifest.json":
        raise FormatError(f"{path}: expected a bundle's manifest.json")
    try:
        m = read_manifest(path.parent, check_files=False)
    except BundleError as e:
        raise FormatError(str(e)) from None
    splits = tuple(SplitInfo(name=s.name, index=s.index, shape=s.shape, head_flops=s.head_flops,
                             tail_flops=s.tail_flops) for s in m.splits)
    return ManifestInfo(model_name=m.model.name, input_shape=m.model.input_shape,
                        full_flops=m.full_flops, splits=splits)


def load_profile(path: Path) -> Profile:
    fix = "re-run `python -m converter.profile` on the bundle"
    data = _read_json(path, "offline profile", fix)
    _check_version(data, PROFILE_VERSION, path, fix)
    try:
        j = _field(data, "jpeg", path)
        jpeg = JpegProfile(quality=int(j.get("quality", 90)), bytes_mean=float(j["bytes_mean"]),
                           bytes_p95=float(j.get("bytes_p95", j["bytes_mean"])),
                           drop_pp=float(j.get("drop_pp", 0.0)),
                           encode_ms=float(j["encode_ms"]) if "encode_ms" in j else None,
                           decode_ms=float(j["decode_ms"]) if "decode_ms" in j else None)
        tail_ms = {str(k): float(v["tail_ms"]) for k, v in data.get("splits", {}).items()
                   if isinstance(v, dict) and "tail_ms" in v}
        configs = tuple(
            ConfigProfile(split=str(c["split"]), bits=int(c["bits"]),
                          drop_pp=float(c.get("drop_pp", 0.0)),
                          bytes_mean=float(c["bytes_mean"]),
                          bytes_p95=float(c.get("bytes_p95", c["bytes_mean"])),
                          pack_ms=float(c.get("pack_ms", 0.0)),
                          unpack_ms=float(c.get("unpack_ms", 0.0)))
            for c in _field(data, "configs", path))
        return Profile(float_top1=float(data.get("float_top1", 0.0)), jpeg=jpeg, tail_ms=tail_ms,
                       configs=configs)
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError(f"{path}: malformed profile ({e!r}); {fix}") from None


def load_device_profile(path: Path) -> DeviceProfile:
    fix = "re-run `python -m edge_runtime.profile` on the board"
    data = _read_json(path, "device profile", fix)
    _check_version(data, DEVICE_PROFILE_VERSION, path, fix)
    try:
        return DeviceProfile(device=str(data.get("device", "?")),
                             num_threads=int(data.get("num_threads", 0)),
                             full_ms=float(_field(data, "full_ms", path)),
                             heads_ms={str(k): float(v) for k, v in
                                       _field(data, "heads_ms", path).items()})
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError(f"{path}: malformed device profile ({e!r}); {fix}") from None


def device_profile_from_flops(manifest: ManifestInfo, flops_per_s: float) -> DeviceProfile:
    """A stand-in device profile when none was measured: latency = FLOPs / sustained FLOP/s."""
    if flops_per_s <= 0:
        raise ValueError(f"flops_per_s must be > 0, got {flops_per_s}")
    heads = {s.name: 1e3 * s.head_flops / flops_per_s for s in manifest.splits
             if s.name != INPUT_SPLIT}
    return DeviceProfile(device=f"estimated-from-flops@{flops_per_s:.3g}", num_threads=0,
                         full_ms=1e3 * manifest.full_flops / flops_per_s, heads_ms=heads)
