"""BUNDLE/profile.json (offline accuracy and bytes per config) and the manifest summary the
scheduler decides with (docs/FORMATS.md).

Standard library json only: the scheduler runs on the board and in the simulator, neither of
which may import TensorFlow or the converter. Readers reject versions they do not know.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from splitinfer.bundle.files import check_version, field, read_json
from splitinfer.bundle.manifest import load_manifest as read_manifest
from splitinfer.codec import PROFILE_VARIANTS
from splitinfer.errors import BundleError, FormatError

PROFILE_FILE = "profile.json"
#: 2: a config's range choice is "variant" (version 1 called it "params"); 3: every drop comes
#: with one-sided confidence bounds (drop_lower_pp, drop_upper_pp) measured on evaluation images
#: disjoint from the calibration images, both recorded under "dataset".
PROFILE_VERSION = 3
READABLE_PROFILE_VERSIONS = (1, 2, 3)
#: Which drop the scheduler holds to `max_drop_pp`: the upper confidence bound (the default: the
#: SLO then holds on images the profile never saw) or the point estimate on the evaluation images.
DROP_ESTIMATES = ("upper", "point")


def row_drop(row: dict[str, Any], estimate: str = "upper") -> float:
    """A raw profile row's drop under `estimate` (benchmarks read rows, not the typed profile).
    Rows without bounds (profile versions 1 and 2) have only the point estimate."""
    _check_estimate(estimate)
    if estimate == "upper" and "drop_upper_pp" in row:
        return float(row["drop_upper_pp"])
    return float(row.get("drop_pp", 0.0))


def _check_estimate(estimate: str) -> None:
    if estimate not in DROP_ESTIMATES:
        raise ValueError(f"Expected a drop estimate in {DROP_ESTIMATES}. Received: {estimate!r}")


def config_variant(row: dict[str, Any]) -> str:
    """How the profiler packed a config row (`splitinfer.codec.PROFILE_VARIANTS`), in either
    version of profile.json."""
    return str(row.get("variant", row.get("params", "frame")))


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
    """One (split, bits) row of profile.json. `drop_pp` is the drop the profile was read for
    (`DROP_ESTIMATES`); `point_drop_pp` and `upper_drop_pp` are both kept for reports."""

    split: str
    bits: int
    drop_pp: float
    bytes_mean: float
    bytes_p95: float
    pack_ms: float
    unpack_ms: float
    variant: str = "frame"  # how its ranges were found (`splitinfer.codec.PROFILE_VARIANTS`)
    point_drop_pp: float | None = None
    upper_drop_pp: float | None = None


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
    images: int = 0  # how many evaluation images the figures come from
    drop_estimate: str = "point"  # which drop `drop_pp` holds (`DROP_ESTIMATES`)
    confidence: float | None = None  # level of each one-sided bound (None: no bounds, v1/v2)
    tail_backend: str = "tf"  # what ran the tails whose batch-1 times are `tail_ms`


def load_manifest_info(path: Path) -> ManifestInfo:
    """The fields the scheduler uses, read by the one manifest reader (`bundle.manifest`)."""
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


def load_profile(path: Path, drop_estimate: str = "upper") -> Profile:
    """BUNDLE/profile.json, typed; FormatError (one line, with the fix) when it cannot be read.
    `drop_estimate` picks the drop every config's `drop_pp` holds (`DROP_ESTIMATES`)."""
    fix = "re-run `python -m converter.profile` on the bundle"
    return parse_profile(read_json(path, "offline profile", fix), path, drop_estimate)


def parse_profile(data: dict[str, Any], path: Path | str = PROFILE_FILE,
                  drop_estimate: str = "upper") -> Profile:
    """A profile.json document (already parsed JSON) as a typed `Profile`.

    A profile without confidence bounds (versions 1 and 2) is refused for the upper estimate:
    its drops were measured on few images that also fitted its ranges, so an SLO on them does
    not hold on new images."""
    _check_estimate(drop_estimate)
    fix = "re-run `python -m converter.profile` on the bundle"
    check_version(data, READABLE_PROFILE_VERSIONS, Path(path), fix)
    bounded = data.get("confidence") is not None
    if drop_estimate == "upper" and not bounded:
        raise FormatError(f"{path}: version {data.get('version')} has no confidence bounds on its "
                          f"accuracy drops; {fix}, or use --drop-estimate point")
    try:
        j = field(data, "jpeg", path)
        jpeg = JpegProfile(quality=int(j.get("quality", 90)), bytes_mean=float(j["bytes_mean"]),
                           bytes_p95=float(j.get("bytes_p95", j["bytes_mean"])),
                           drop_pp=row_drop(j, drop_estimate),
                           encode_ms=float(j["encode_ms"]) if "encode_ms" in j else None,
                           decode_ms=float(j["decode_ms"]) if "decode_ms" in j else None)
        tail_ms = {str(k): float(v["tail_ms"]) for k, v in data.get("splits", {}).items()
                   if isinstance(v, dict) and "tail_ms" in v}
        configs = tuple(
            ConfigProfile(split=str(c["split"]), bits=int(c["bits"]),
                          drop_pp=row_drop(c, drop_estimate),
                          bytes_mean=float(c["bytes_mean"]),
                          bytes_p95=float(c.get("bytes_p95", c["bytes_mean"])),
                          pack_ms=float(c.get("pack_ms", 0.0)),
                          unpack_ms=float(c.get("unpack_ms", 0.0)), variant=config_variant(c),
                          point_drop_pp=row_drop(c, "point"),
                          upper_drop_pp=float(c["drop_upper_pp"]) if "drop_upper_pp" in c else None)
            for c in field(data, "configs", path))
        unknown = sorted({c.variant for c in configs} - set(PROFILE_VARIANTS))
        if unknown:
            raise FormatError(f"{path}: variants {unknown} are unknown to this build (it knows "
                              f"{list(PROFILE_VARIANTS)}); {fix} or update splitinfer")
        dataset = data.get("dataset") or {}
        return Profile(float_top1=float(data.get("float_top1", 0.0)), jpeg=jpeg, tail_ms=tail_ms,
                       configs=configs, images=int(dataset.get("n", 0)),
                       drop_estimate=drop_estimate,
                       confidence=float(data["confidence"]["level"]) if bounded else None,
                       tail_backend=str(data.get("tail_backend", "tf")))
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError(f"{path}: malformed profile ({e!r}); {fix}") from None
