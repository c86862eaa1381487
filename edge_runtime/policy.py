"""From an edge configuration to the scheduler it runs: the same code the simulator drives.

`device`, `cloud` and `fixed` are the scheduler with a one-configuration table (plus
device-only, which every table keeps for fallback), so all policies fall back and recover the
same way.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from scheduler import devices
from scheduler.bundle import Bundle, load_bundle
from scheduler.core import Config, ConfigTable, Objective, Slo, Where
from scheduler.scheduler import PinnedScheduler, Scheduler, SchedulerParams
from splitinfer.bundle.device import device_profile_from_flops, load_device_profile
from splitinfer.bundle.manifest import FULL, MANIFEST_FILE
from splitinfer.bundle.profile import PROFILE_FILE, load_manifest_info


def build_scheduler(bundle: Path, config: Any, exclude: Sequence[str] = ()
                    ) -> tuple[Scheduler, tuple[float, float], dict[str, float]]:
    """The scheduler for `config` (an EdgeConfig), the device slow-down factors it assumes (heads;
    single-threaded work such as packing), and the emulated board's time per head
    (`board_head_ms`)."""
    board_class = devices.device_class(config.device_class or "this-machine")
    if config.policy == "device" and not (Path(bundle) / PROFILE_FILE).is_file():
        return _device_only(Path(bundle), config, board_class)  # unprofiled: still runs
    b = load_bundle(bundle, drop_estimate=config.drop_estimate)
    factor, serial = b.device_factor(board_class), b.serial_factor(board_class)
    board = board_head_ms(b, factor)
    table = b.table(factor, None, serial)  # the real cloud is measured online, not a class
    excluded = set(exclude)
    if config.policy == "device":
        table = table.select(lambda c: False)
    elif config.policy == "cloud":
        table = table.select(lambda c: c.where is Where.CLOUD)
    elif config.policy == "fixed":
        if config.split == "input":
            table = table.select(lambda c: c.where is Where.CLOUD)
        else:
            table = table.select(lambda c: c.split == config.split and c.bits == config.bits)
            if len(table) < 2:
                raise ValueError(f"The profile has no configuration {config.split}/{config.bits}: "
                                 "pick a profiled split and bit width (see profile.json).")
    elif excluded:
        table = table.select(lambda c: c.split not in excluded)
    slo = Slo(max_latency_ms=config.slo_ms, max_drop_pp=config.max_drop_pp)
    if config.policy == "auto":
        params = SchedulerParams(pipeline_depth=config.pipeline_depth)
        return Scheduler(table, Objective.parse(config.objective), slo, params), (factor, serial), board
    params = SchedulerParams(pipeline_depth=config.pipeline_depth, relief=False)
    objective = Objective.parse(config.objective)
    if config.policy == "device":
        return Scheduler(table, objective, slo, params), (factor, serial), board
    return PinnedScheduler.of(table, objective, slo, params, config.policy), (factor, serial), board


def _device_only(bundle: Path, config: Any, board_class: devices.DeviceClass
                 ) -> tuple[Scheduler, float, dict[str, float]]:
    """Device-only needs no offline profile: a one-configuration table, timed by the device
    profile when there is one, else estimated from the manifest's FLOPs."""
    device_file = bundle / "device-this-machine.json"
    device = (load_device_profile(device_file) if device_file.is_file() else
              device_profile_from_flops(load_manifest_info(bundle / MANIFEST_FILE),
                                        devices.THIS_MACHINE_FLOPS_PER_S))
    factor = board_class.factor(device.host_reference_ms)
    serial = board_class.serial_factor(device.host_reference_1t_ms, device.host_reference_ms)
    only = Config(split=FULL, bits=None, where=Where.DEVICE, head_ms=device.full_ms * factor,
                  pack_ms=0.0, bytes=0.0, unpack_ms=0.0, tail_ms=0.0, drop_pp=0.0)
    scheduler = Scheduler(ConfigTable.build([only]), Objective.parse(config.objective),
                          Slo(max_latency_ms=config.slo_ms, max_drop_pp=config.max_drop_pp),
                          SchedulerParams(pipeline_depth=config.pipeline_depth, relief=False))
    return scheduler, (factor, serial), {}


def board_head_ms(b: Bundle, factor: float) -> dict[str, float]:
    """Per head (and "full"), the emulated board's time: the device profile's time on this
    machine times the class factor. Empty without a device class (nothing is padded) or
    without a measured device profile (runs are then padded by the factor, see the runner)."""
    if factor <= 1.0 or b.device_estimated:
        return {}
    return {**{s: ms * factor for s, ms in b.device.heads_ms.items()}, FULL: b.device.full_ms * factor}
