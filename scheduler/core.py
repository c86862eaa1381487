"""Pure scheduling logic: configurations, the latency/throughput model, and the chooser.

Everything here is a function of plain data so the live edge runtime, the simulator and the tests
share one model. The `Scheduler` class (scheduler.scheduler) only keeps estimates and hysteresis
state around these functions.

Latency model for one frame of configuration c (all in ms):

    device_ms  = (head_ms[c] + pack_ms[c]) * device_scale      head on the board, then pack/JPEG
    uplink_ms  = bytes[c] * 8 / bandwidth                      serialisation on the uplink
    cloud_ms   = unpack_ms[c] + tail_ms[c] * cloud_scale       unpack (cloud CPU) + tail (cloud)
    latency    = device_ms + uplink_ms + rtt + queue + cloud_ms     (rtt/queue only if offloaded)

Throughput (frames/s) when frames are pipelined through the three stages with at most
`pipeline_depth` offloaded frames in flight (outstanding requests; a device-only frame is not
outstanding): the slowest stage bounds it, and so does Little's law:

    throughput = min(1000 / max(device_ms, uplink_ms, cloud_ms), depth * 1000 / latency)

Device-only (`full`) has only the device stage: latency = full_ms * device_scale, no bytes.

Device relief (State.mix_full_ms > 0): when the uplink, the cloud or the in-flight limit is
slower than the head, the device has spare time between heads, and the runtime fills it by
running whole frames locally (Scheduler.decide returns such "relief" frames while the uplink is
backlogged or the in-flight limit is reached). With r_off the offloaded rate above,

    throughput = r_off + (1 - r_off * device_ms / 1000) * 1000 / full_ms

Cloud time and bytes stay per offloaded frame (an upper bound on the per-frame average).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Iterable

import numpy as np

from splitinfer.bundle.manifest import FULL, INPUT_SPLIT
from splitinfer.encoding import Encoding

# Cloud-only JPEG costs when profile.json does not carry them (FORMATS.md v1 has no field for
# them): encode on this machine, decode on the cloud CPU. PIL encodes a 160x160 RGB image at
# quality 90 in well under a millisecond here.
DEFAULT_JPEG_ENCODE_MS = 0.5
DEFAULT_JPEG_DECODE_MS = 0.3


class Where(str, Enum):
    """Where a configuration runs the model."""

    DEVICE = "device"
    CLOUD = "cloud"
    SPLIT = "split"


class Metric(str, Enum):
    """What an objective minimises (throughput is minimised as ms per frame)."""

    LATENCY = "latency"
    THROUGHPUT = "throughput"
    CLOUD = "cloud"
    BYTES = "bytes"


@dataclass(frozen=True)
class Objective:
    """A weighted combination of metrics; one metric with weight 1 is the plain objective.

    With several metrics each is divided by its mean over all configurations before weighting,
    so weights are unit-free ("0.7 latency + 0.3 bytes" means what it says).
    """

    weights: tuple[tuple[Metric, float], ...]

    @classmethod
    def single(cls, metric: Metric | str) -> "Objective":
        return cls(((Metric(metric), 1.0),))

    @classmethod
    def parse(cls, text: str) -> "Objective":
        """'latency', 'throughput', 'cloud', 'bytes', or weights like 'latency=0.7,bytes=0.3'."""
        names = [m.value for m in Metric]
        items: list[tuple[Metric, float]] = []
        for part in filter(None, (p.strip() for p in text.split(","))):
            name, _, w = part.partition("=")
            name = name.strip().lower()
            aliases = {"min-latency": "latency", "max-throughput": "throughput",
                       "min-cloud": "cloud", "min-bytes": "bytes", "fps": "throughput"}
            name = aliases.get(name, name)
            if name not in names:
                raise ValueError(f"unknown objective {name!r} in {text!r}: expected one of {names}, "
                                 f"or weights like 'latency=0.7,bytes=0.3'")
            try:
                weight = float(w) if w else 1.0
            except ValueError:
                raise ValueError(f"objective weight {w!r} in {text!r} is not a number") from None
            if weight < 0 or not math.isfinite(weight):
                raise ValueError(f"objective weight for {name} must be >= 0, got {weight}")
            items.append((Metric(name), weight))
        if not items or sum(w for _, w in items) <= 0:
            raise ValueError(f"objective {text!r} has no positive weight: expected e.g. 'latency'")
        return cls(tuple(items))

    @property
    def label(self) -> str:
        if len(self.weights) == 1:
            return self.weights[0][0].value
        return ",".join(f"{m.value}={w:g}" for m, w in self.weights)


@dataclass(frozen=True)
class Slo:
    """Constraints; None means unconstrained."""

    max_latency_ms: float | None = None
    max_drop_pp: float | None = None
    max_bytes: float | None = None
    min_throughput_fps: float | None = None


@dataclass(frozen=True)
class Config:
    """One way to run a frame. Costs are already scaled to the device and cloud classes."""

    split: str            # "full" (device-only), "input" (cloud-only JPEG) or a split name
    bits: int | None      # the wire tag of its encoding (see `encoding`); None for full and JPEG
    where: Where
    head_ms: float        # device compute (full model for device-only)
    pack_ms: float        # device-side pack or JPEG encode
    bytes: float          # mean payload bytes per frame
    unpack_ms: float      # cloud-side unpack or JPEG decode (cloud CPU)
    tail_ms: float        # cloud compute of the tail
    drop_pp: float        # accuracy drop vs the float model, percentage points
    depth: int = 0        # position along the network: 0 = input, larger = later; full = last

    @property
    def encoding(self) -> Encoding:
        """What `bits` stands for: a width, a float, per-channel widths, JPEG or nothing."""
        return Encoding.of(self.bits, self.split)

    @property
    def key(self) -> str:
        if self.where is Where.DEVICE:
            return FULL
        if self.where is Where.CLOUD:
            return f"{INPUT_SPLIT}/jpeg"
        return f"{self.split}/{self.bits}"


@dataclass(frozen=True)
class State:
    """The online estimates a prediction depends on."""

    bandwidth_bps: float          # uplink, bits per second
    rtt_ms: float
    queue_ms: float = 0.0
    device_scale: float = 1.0     # observed / profiled device latency
    cloud_scale: float = 1.0      # observed / profiled tail latency
    pipeline_depth: int = 6
    mix_full_ms: float = 0.0      # > 0: device relief with this device-only latency (see above)


@dataclass(frozen=True)
class Prediction:
    latency_ms: float
    throughput_fps: float
    bytes: float
    cloud_ms: float
    drop_pp: float
    device_ms: float
    uplink_ms: float


def estimate(config: Config, state: State) -> Prediction:
    """The model above for one configuration (the reference for the vectorised version)."""
    device_ms = (config.head_ms + config.pack_ms) * state.device_scale
    if config.where is Where.DEVICE:
        return Prediction(device_ms, 1000.0 / max(device_ms, 1e-6), 0.0, 0.0, config.drop_pp,
                          device_ms, 0.0)
    uplink_ms = config.bytes * 8.0 * 1000.0 / max(state.bandwidth_bps, 1.0)
    cloud_ms = config.unpack_ms + config.tail_ms * state.cloud_scale
    latency = device_ms + uplink_ms + state.rtt_ms + state.queue_ms + cloud_ms
    throughput = float(pipelined_throughput(np.array([device_ms]), np.array([uplink_ms]),
                                            np.array([cloud_ms]), np.array([latency]), state)[0])
    return Prediction(latency, throughput, config.bytes, cloud_ms, config.drop_pp, device_ms,
                      uplink_ms)


def pipelined_throughput(device: np.ndarray, uplink: np.ndarray, cloud: np.ndarray,
                         latency: np.ndarray, state: State) -> np.ndarray:
    """Frames/s through the three stages (module docstring), with device relief if enabled."""
    stage = np.maximum(np.maximum(device, uplink), cloud)
    r_off = np.minimum(1000.0 / np.maximum(stage, 1e-6),
                       (state.pipeline_depth * 1000.0) / np.maximum(latency, 1e-6))
    if state.mix_full_ms <= 0:
        return r_off
    spare = np.maximum(1.0 - r_off * device * 1e-3, 0.0)     # device time left per second
    return r_off + spare * (1000.0 / state.mix_full_ms)


@dataclass(frozen=True, eq=False)
class ConfigTable:
    """Configurations plus their constants as numpy arrays, so one decision is a few vector ops."""

    configs: tuple[Config, ...]
    device_ms: np.ndarray = field(repr=False)    # head + pack
    bits_out: np.ndarray = field(repr=False)     # bytes * 8 (0 for device-only)
    unpack_ms: np.ndarray = field(repr=False)
    tail_ms: np.ndarray = field(repr=False)
    drop_pp: np.ndarray = field(repr=False)
    bytes: np.ndarray = field(repr=False)
    offload: np.ndarray = field(repr=False)      # 1.0 where the frame goes to the cloud
    full_index: int = 0

    @classmethod
    def build(cls, configs: Iterable[Config]) -> "ConfigTable":
        configs = tuple(configs)
        if not configs:
            raise ValueError("no configurations: the profile has no configs and no device-only")
        full = [i for i, c in enumerate(configs) if c.where is Where.DEVICE]
        if len(full) != 1:
            raise ValueError(f"expected exactly one device-only configuration, got {len(full)}")
        f = lambda xs: np.asarray(list(xs), dtype=np.float64)  # noqa: E731
        offload = f(0.0 if c.where is Where.DEVICE else 1.0 for c in configs)
        return cls(
            configs=configs,
            device_ms=f(c.head_ms + c.pack_ms for c in configs),
            bits_out=f(c.bytes * 8.0 for c in configs) * offload,
            unpack_ms=f(c.unpack_ms for c in configs) * offload,
            tail_ms=f(c.tail_ms for c in configs) * offload,
            drop_pp=f(c.drop_pp for c in configs),
            bytes=f(c.bytes for c in configs) * offload,
            offload=offload,
            full_index=full[0],
        )

    def __len__(self) -> int:
        return len(self.configs)

    def select(self, keep) -> "ConfigTable":
        """A table of the configurations for which keep(config) is true (device-only always)."""
        return ConfigTable.build(c for c in self.configs if c.where is Where.DEVICE or keep(c))

    def index(self, key: str) -> int:
        for i, c in enumerate(self.configs):
            if c.key == key:
                return i
        raise KeyError(f"no configuration {key!r}; have {[c.key for c in self.configs][:8]}...")


@dataclass(frozen=True, eq=False)
class Predictions:
    """estimate() for every configuration of a table, as arrays (same order as the table)."""

    latency_ms: np.ndarray
    throughput_fps: np.ndarray
    bytes: np.ndarray
    cloud_ms: np.ndarray
    drop_pp: np.ndarray
    device_ms: np.ndarray
    uplink_ms: np.ndarray

    def take(self, idx) -> "Predictions":
        """The predictions of the configurations at positions `idx`, in that order."""
        idx = np.asarray(idx, dtype=np.int64)
        return Predictions(*(getattr(self, f)[idx] for f in (
            "latency_ms", "throughput_fps", "bytes", "cloud_ms", "drop_pp", "device_ms",
            "uplink_ms")))

    def at(self, i: int) -> Prediction:
        return Prediction(float(self.latency_ms[i]), float(self.throughput_fps[i]),
                          float(self.bytes[i]), float(self.cloud_ms[i]), float(self.drop_pp[i]),
                          float(self.device_ms[i]), float(self.uplink_ms[i]))


def estimate_all(table: ConfigTable, state: State) -> Predictions:
    """Vectorised estimate(): identical numbers for every configuration of `table`."""
    device = table.device_ms * state.device_scale
    uplink = table.bits_out * (1000.0 / max(state.bandwidth_bps, 1.0))
    cloud = table.unpack_ms + table.tail_ms * state.cloud_scale
    latency = device + uplink + cloud + table.offload * (state.rtt_ms + state.queue_ms)
    throughput = pipelined_throughput(device, uplink, cloud, latency, state)
    return Predictions(latency, throughput, table.bytes, cloud, table.drop_pp, device, uplink)


def with_true_uplink(p: Predictions, uplink_ms: np.ndarray, latency_ms: np.ndarray,
                     state: State) -> Predictions:
    """Predictions with true uplink times and latencies substituted (the oracle's view);
    `state` supplies the pipeline depth and device relief."""
    thr = pipelined_throughput(p.device_ms, uplink_ms, p.cloud_ms, latency_ms, state)
    return Predictions(latency_ms, thr, p.bytes, p.cloud_ms, p.drop_pp, p.device_ms, uplink_ms)


def metric_values(p: Predictions, metric: Metric) -> np.ndarray:
    if metric is Metric.LATENCY:
        return p.latency_ms
    if metric is Metric.THROUGHPUT:
        return 1000.0 / np.maximum(p.throughput_fps, 1e-9)   # ms per frame
    if metric is Metric.CLOUD:
        return p.cloud_ms
    return p.bytes


def scores(p: Predictions, objective: Objective) -> np.ndarray:
    """Lower is better. Ties (e.g. zero bytes) are broken by latency with a tiny weight."""
    tie = p.latency_ms * 1e-9
    if len(objective.weights) == 1:
        return metric_values(p, objective.weights[0][0]) + tie
    total = tie.copy()
    for metric, weight in objective.weights:
        v = metric_values(p, metric)
        total += weight * v / max(float(v.mean()), 1e-9)
    return total


def violations(p: Predictions, slo: Slo) -> tuple[np.ndarray, np.ndarray]:
    """(accuracy excess in pp, normalised violation of the other SLOs); 0 means met.

    The other SLOs are summed as relative excess: latency/max - 1, bytes/max - 1,
    1 - throughput/min, so "10% over the latency bound" and "10% under the throughput floor"
    weigh the same.
    """
    acc = (np.maximum(p.drop_pp - slo.max_drop_pp, 0.0) if slo.max_drop_pp is not None
           else np.zeros_like(p.drop_pp))
    other = np.zeros_like(p.latency_ms)
    if slo.max_latency_ms is not None:
        other = other + np.maximum(p.latency_ms / max(slo.max_latency_ms, 1e-9) - 1.0, 0.0)
    if slo.max_bytes is not None:
        other = other + np.maximum(p.bytes / max(slo.max_bytes, 1.0) - 1.0, 0.0) \
            if slo.max_bytes > 0 else other + (p.bytes > 0) * (1.0 + p.bytes / 1e3)
    if slo.min_throughput_fps is not None:
        other = other + np.maximum(1.0 - p.throughput_fps / max(slo.min_throughput_fps, 1e-9), 0.0)
    return acc, other


@dataclass(frozen=True)
class Choice:
    index: int
    slo_met: bool
    reason: str


def choose(p: Predictions, objective: Objective, slo: Slo) -> Choice:
    """The best configuration for `objective` among those meeting `slo`.

    When none meets the SLO, the least bad one by this rule: keep the configurations that meet
    the accuracy bound (or, if none does, those closest to it); among them take the smallest
    normalised violation of the other SLOs (see `violations`); break ties by the objective.
    """
    acc, other = violations(p, slo)
    s = scores(p, objective)
    feasible = (acc <= 0.0) & (other <= 0.0)
    if feasible.any():
        i = int(np.argmin(np.where(feasible, s, np.inf)))
        return Choice(i, True, f"best {objective.label} of {int(feasible.sum())} configurations "
                               f"meeting the SLO")
    return choose_keys(acc, other, s)


@dataclass(frozen=True, eq=False)
class Evaluation:
    """One state's predictions and chooser keys for every configuration (arrays)."""

    latency_ms: np.ndarray
    throughput_fps: np.ndarray | None     # None when neither objective nor SLO needs it
    cloud_ms: np.ndarray
    score: np.ndarray
    acc: np.ndarray
    other: np.ndarray


class CompiledChooser:
    """estimate_all() + choose() for one (table, objective, slo), with everything that does not
    depend on the online state (accuracy and bytes violations, which metrics are needed)
    computed once. Same numbers as the pure functions (the tests check), a few times faster:
    this is what makes a decision cost tens of microseconds for hundreds of configurations."""

    def __init__(self, table: ConfigTable, objective: Objective, slo: Slo) -> None:
        self.table, self.objective, self.slo = table, objective, slo
        zeros = np.zeros(len(table))
        static = Predictions(zeros, zeros + np.inf, table.bytes, zeros, table.drop_pp, zeros, zeros)
        self.acc, self.other_static = violations(static, Slo(max_drop_pp=slo.max_drop_pp,
                                                             max_bytes=slo.max_bytes))
        self.acc_ok = self.acc <= 0.0
        metrics = {m for m, _ in objective.weights}
        self.need_thr = Metric.THROUGHPUT in metrics or slo.min_throughput_fps is not None
        self.single = objective.weights[0][0] if len(objective.weights) == 1 else None
        self.single_static = (table.bytes if self.single is Metric.BYTES else None)
        self.static_feasible = self.acc_ok & (self.other_static <= 0.0)
        self._means = {"device": float(table.device_ms.mean()), "bits": float(table.bits_out.mean()),
                       "tail": float(table.tail_ms.mean()), "unpack": float(table.unpack_ms.mean()),
                       "offload": float(table.offload.mean()), "bytes": float(table.bytes.mean())}
        self._reason = f"best {objective.label} of the configurations meeting the SLO"

    def evaluate(self, state: State) -> Evaluation:
        t = self.table
        device = t.device_ms * state.device_scale
        uplink = t.bits_out * (1000.0 / max(state.bandwidth_bps, 1.0))
        cloud = t.tail_ms * state.cloud_scale
        cloud += t.unpack_ms
        latency = device + uplink
        latency += cloud
        latency += t.offload * (state.rtt_ms + state.queue_ms)
        ms_per_frame = None
        if self.need_thr and state.mix_full_ms > 0:
            ms_per_frame = 1000.0 / pipelined_throughput(device, uplink, cloud, latency, state)
        elif self.need_thr:   # 1000 / throughput = max(slowest stage, latency / depth)
            ms_per_frame = np.maximum(np.maximum(device, uplink), cloud)
            np.maximum(ms_per_frame, latency * (1.0 / state.pipeline_depth), out=ms_per_frame)
        slo = self.slo
        other = self.other_static
        if slo.max_latency_ms is not None:
            v = latency * (1.0 / max(slo.max_latency_ms, 1e-9))
            v -= 1.0
            other = other + np.maximum(v, 0.0, out=v)
        if slo.min_throughput_fps is not None:
            v = 1.0 - (1000.0 / max(slo.min_throughput_fps, 1e-9)) / ms_per_frame
            other = other + np.maximum(v, 0.0, out=v)
        m = self.single
        if m is Metric.LATENCY:
            score = latency
        elif m is Metric.THROUGHPUT:
            score = ms_per_frame
        elif m is Metric.CLOUD:
            score = cloud + latency * 1e-9      # ties (zero cloud time) go to the faster
        elif m is Metric.BYTES:
            score = self.single_static + latency * 1e-9
        else:   # weighted: each metric over its mean across configurations (as scores())
            mean = self._means
            k_up = 1000.0 / max(state.bandwidth_bps, 1.0)
            score = latency * 1e-9
            for metric, w in self.objective.weights:
                if metric is Metric.LATENCY:   # the mean of a linear model is linear in the means
                    ref = (mean["device"] * state.device_scale + mean["bits"] * k_up
                           + mean["tail"] * state.cloud_scale + mean["unpack"]
                           + mean["offload"] * (state.rtt_ms + state.queue_ms))
                    score = score + latency * (w / max(ref, 1e-9))
                elif metric is Metric.CLOUD:
                    ref = mean["tail"] * state.cloud_scale + mean["unpack"]
                    score = score + cloud * (w / max(ref, 1e-9))
                elif metric is Metric.BYTES:
                    score = score + t.bytes * (w / max(mean["bytes"], 1e-9))
                else:
                    ref = float(ms_per_frame.sum()) / len(ms_per_frame)
                    score = score + ms_per_frame * (w / max(ref, 1e-9))
        thr = 1000.0 / ms_per_frame if ms_per_frame is not None else None
        return Evaluation(latency, thr, cloud, score, self.acc, other)

    def throughput_at(self, e: Evaluation, i: int, state: State) -> float:
        """Predicted throughput of configuration i (computed only when the objective needed it
        for all)."""
        if e.throughput_fps is not None:
            return float(e.throughput_fps[i])
        return estimate(self.table.configs[i], state).throughput_fps

    def best(self, e: Evaluation) -> Choice:
        """choose() on an evaluation (same rule, same result)."""
        if e.other is self.other_static:
            feasible = self.static_feasible
        else:
            feasible = self.acc_ok & (e.other <= 0.0)
        masked = np.where(feasible, e.score, np.inf)
        i = int(np.argmin(masked))
        if masked[i] < np.inf:
            return Choice(i, True, self._reason)
        return choose_keys(e.acc, e.other, e.score)


def choose_keys(acc: np.ndarray, other: np.ndarray, s: np.ndarray) -> Choice:
    """The no-feasible-configuration rule of choose(), on precomputed keys."""
    acc_min = float(acc.min())
    pool = acc <= acc_min + 1e-12
    v_min = float(np.where(pool, other, np.inf).min())
    pool &= other <= v_min + 1e-9
    i = int(np.argmin(np.where(pool, s, np.inf)))
    why = ("accuracy bound met" if acc_min <= 0 else f"accuracy bound missed by {acc_min:.2f} pp")
    return Choice(i, False, f"no configuration meets the SLO; least bad ({why}, normalised "
                            f"violation {float(other[i]):.2f})")
