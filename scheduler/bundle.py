"""Turn a bundle's profile files into scaled configurations for one device and cloud class."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from scheduler.core import (
    DEFAULT_JPEG_DECODE_MS,
    DEFAULT_JPEG_ENCODE_MS,
    Config,
    ConfigTable,
    Where,
)
from scheduler.devices import THIS_MACHINE_FLOPS_PER_S, CloudClass, DeviceClass
from splitinfer.bundle.device import (
    DeviceProfile,
    device_profile_from_flops,
    load_device_profile,
)
from splitinfer.bundle.manifest import FULL, INPUT_SPLIT
from splitinfer.bundle.profile import (
    ManifestInfo,
    Profile,
    load_manifest_info,
    load_profile,
)
from splitinfer.errors import FormatError


def _tail_ms(split: str, profile: Profile, manifest: ManifestInfo | None) -> float:
    """Profiled tail latency; without one, scale a profiled tail by the manifest's tail FLOPs."""
    if split in profile.tail_ms:
        return profile.tail_ms[split]
    if manifest is not None and profile.tail_ms:
        known = [(manifest.split(s).tail_flops, ms) for s, ms in profile.tail_ms.items()
                 if any(x.name == s for x in manifest.splits)]
        known = [(f, ms) for f, ms in known if f > 0]
        if known:
            flops = manifest.split(split).tail_flops
            per_flop = sorted(ms / f for f, ms in known)[len(known) // 2]
            return flops * per_flop
    raise FormatError(f"profile.json has no tail_ms for split {split!r} (has "
                      f"{sorted(profile.tail_ms)}) and no manifest FLOPs to estimate it from; "
                      f"re-run `python -m converter.profile`")


def _head_ms(split: str, device: DeviceProfile, manifest: ManifestInfo | None) -> float:
    if split in device.heads_ms:
        return device.heads_ms[split]
    if manifest is not None and manifest.full_flops > 0:
        return device.full_ms * manifest.split(split).head_flops / manifest.full_flops
    raise FormatError(f"device profile {device.device!r} has no head latency for split {split!r} "
                      f"(has {sorted(device.heads_ms)[:5]}...); re-run `python -m edge_runtime.profile`")


def build_configs(profile: Profile, device: DeviceProfile, *, device_factor: float = 1.0,
                  cloud: CloudClass | None = None, manifest: ManifestInfo | None = None,
                  serial_factor: float | None = None) -> tuple[Config, ...]:
    """Device-only, cloud-only JPEG and every profiled (split, bits), scaled to the classes.

    Heads are multiplied by `device_factor`; single-threaded device work (pack, JPEG encode) by
    `serial_factor` (default: `device_factor`); tails by the cloud class (with its floor).
    Unpack and JPEG decode run on the cloud's CPU and stay as profiled.
    """
    serial_factor = device_factor if serial_factor is None else serial_factor
    if device_factor <= 0 or serial_factor <= 0:
        raise ValueError(f"device factors must be > 0, got {device_factor}, {serial_factor}")

    def cloud_tail(ms: float) -> float:
        return ms if cloud is None else max(cloud.floor_ms, ms * cloud.factor_for(profile.tail_backend))

    order = {s.name: s.index for s in manifest.splits} if manifest is not None else {}
    n_splits = (max(order.values()) + 1) if order else 1 + len({c.split for c in profile.configs})
    if not order:   # without a manifest, profile order stands in for network order
        for c in profile.configs:
            order.setdefault(c.split, len(order) + 1)
    configs = [Config(split=FULL, bits=None, where=Where.DEVICE,
                      head_ms=device.full_ms * device_factor, pack_ms=0.0, bytes=0.0,
                      unpack_ms=0.0, tail_ms=0.0, drop_pp=0.0, depth=n_splits)]
    j = profile.jpeg
    configs.append(Config(
        split=INPUT_SPLIT, bits=None, where=Where.CLOUD, head_ms=0.0,
        pack_ms=(j.encode_ms if j.encode_ms is not None else DEFAULT_JPEG_ENCODE_MS) * serial_factor,
        bytes=j.bytes_mean,
        unpack_ms=j.decode_ms if j.decode_ms is not None else DEFAULT_JPEG_DECODE_MS,
        tail_ms=cloud_tail(_tail_ms(INPUT_SPLIT, profile, manifest)), drop_pp=j.drop_pp, depth=0))
    for c in profile.configs:
        if c.split == INPUT_SPLIT:
            continue   # raw float input upload is never better than JPEG; FORMATS keeps it out
        configs.append(Config(
            split=c.split, bits=c.bits, where=Where.SPLIT,
            head_ms=_head_ms(c.split, device, manifest) * device_factor,
            pack_ms=c.pack_ms * serial_factor, bytes=c.bytes_mean, unpack_ms=c.unpack_ms,
            tail_ms=cloud_tail(_tail_ms(c.split, profile, manifest)), drop_pp=c.drop_pp,
            depth=order.get(c.split, 0)))
    return tuple(configs)


@dataclass(frozen=True)
class Bundle:
    """What the simulator reads from a bundle directory."""

    directory: Path
    manifest: ManifestInfo | None
    profile: Profile
    device: DeviceProfile
    device_estimated: bool     # True when head latencies come from FLOPs, not a measurement
    split_order: tuple[str, ...]

    def device_factor(self, device: DeviceClass) -> float:
        """How much slower than this bundle's device profile `device` runs (host-independent:
        the profile's own reference timing cancels the host's speed)."""
        return device.factor(self.device.host_reference_ms)

    def serial_factor(self, device: DeviceClass) -> float:
        """The same for single-threaded work (packing, JPEG encoding): one core on both sides."""
        return device.serial_factor(self.device.host_reference_1t_ms, self.device.host_reference_ms)

    def table(self, device_factor: float, cloud: CloudClass | None,
              serial_factor: float | None = None) -> ConfigTable:
        return ConfigTable.build(build_configs(self.profile, self.device,
                                               device_factor=device_factor, cloud=cloud,
                                               manifest=self.manifest, serial_factor=serial_factor))

    def table_for(self, device: DeviceClass, cloud: CloudClass | None) -> ConfigTable:
        """The configurations as `device` would run them against `cloud`."""
        return self.table(self.device_factor(device), cloud, self.serial_factor(device))


def load_bundle(directory: Path, profile: Path | None = None,
                device_profile: Path | None = None,
                flops_per_s: float = THIS_MACHINE_FLOPS_PER_S,
                drop_estimate: str = "upper") -> Bundle:
    """manifest.json, profile.json and device-this-machine.json of `directory` (or the overrides).

    Without a device profile, head latencies are estimated from the manifest's FLOPs at
    `flops_per_s` (this machine's sustained LiteRT rate); `device_estimated` says so.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FormatError(f"bundle directory {directory} does not exist: build one with "
                          f"`python -m converter` or pass --bundle tests/fixtures/scheduler")
    mpath = directory / "manifest.json"
    manifest = load_manifest_info(mpath) if mpath.is_file() else None
    prof = load_profile(Path(profile) if profile else directory / "profile.json", drop_estimate)
    dpath = Path(device_profile) if device_profile else directory / "device-this-machine.json"
    if dpath.is_file():
        dev, estimated = load_device_profile(dpath), False
    elif device_profile:
        raise FormatError(f"device profile {dpath} not found: pass an existing file or omit "
                          f"--device-profile to estimate from FLOPs")
    elif manifest is not None:
        dev, estimated = device_profile_from_flops(manifest, flops_per_s), True
    else:
        raise FormatError(f"{directory} has neither device-this-machine.json nor manifest.json: "
                          f"cannot tell head latencies; run `python -m edge_runtime.profile`")
    order = tuple(s.name for s in manifest.splits) if manifest else tuple(
        dict.fromkeys(c.split for c in prof.configs))
    return Bundle(directory, manifest, prof, dev, estimated, order)
