"""BUNDLE/device-<name>.json: head latencies measured on one board (docs/FORMATS.md)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from splitinfer.bundle.files import check_version, field, read_json
from splitinfer.bundle.manifest import INPUT_SPLIT
from splitinfer.bundle.profile import ManifestInfo
from splitinfer.errors import FormatError
from splitinfer.reference import REFERENCE_FLOPS

DEVICE_PROFILE_VERSION = 2
READABLE_VERSIONS = (1, 2)  # version 1 has no host reference: it cannot emulate a device class


@dataclass(frozen=True)
class DeviceProfile:
    device: str
    num_threads: int
    full_ms: float
    heads_ms: dict[str, float]
    # the reference model (splitinfer/reference.py) timed in the same run and thread count:
    # what turns these times into an emulated board's; None when it was not measured
    host_reference_ms: float | None = None
    host_reference_1t_ms: float | None = None  # ...on one thread: scales single-threaded work


def load_device_profile(path: Path) -> DeviceProfile:
    fix = "re-run `python -m edge_runtime.profile` on the board"
    data = read_json(path, "device profile", fix)
    check_version(data, READABLE_VERSIONS, path, fix)
    try:
        ref, ref1 = data.get("host_reference_ms"), data.get("host_reference_1t_ms")
        return DeviceProfile(device=str(data.get("device", "?")),
                             num_threads=int(data.get("num_threads", 0)),
                             full_ms=float(field(data, "full_ms", path)),
                             heads_ms={str(k): float(v) for k, v in
                                       field(data, "heads_ms", path).items()},
                             host_reference_ms=float(ref) if ref is not None else None,
                             host_reference_1t_ms=float(ref1) if ref1 is not None else None)
    except (KeyError, TypeError, ValueError) as e:
        raise FormatError(f"{path}: malformed device profile ({e!r}); {fix}") from None


def device_profile_from_flops(manifest: ManifestInfo, flops_per_s: float) -> DeviceProfile:
    """A stand-in device profile when none was measured: latency = FLOPs / sustained FLOP/s.

    The reference model is costed the same way, so an emulated class scales these estimates by
    its published reference time over the reference's FLOPs: independent of `flops_per_s`."""
    if flops_per_s <= 0:
        raise ValueError(f"flops_per_s must be > 0, got {flops_per_s}")
    heads = {s.name: 1e3 * s.head_flops / flops_per_s for s in manifest.splits
             if s.name != INPUT_SPLIT}
    return DeviceProfile(device=f"estimated-from-flops@{flops_per_s:.3g}", num_threads=0,
                         full_ms=1e3 * manifest.full_flops / flops_per_s, heads_ms=heads,
                         host_reference_ms=1e3 * REFERENCE_FLOPS / flops_per_s,
                         host_reference_1t_ms=1e3 * REFERENCE_FLOPS / flops_per_s)
