"""The simulator's policies: each picks the configuration of the next frame.

Static ones (device, cloud, fixed8) always pick the same configuration and never time out:
they wait out outages, as a fixed deployment would. The oracle decides with the truth. The
online ones (dyno, Neurosurgeon) run the live `Scheduler` and are fed exactly the observations
a live runtime has, at the time it would have them (through `Events`).
"""
from __future__ import annotations

import heapq
import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from scheduler.core import (
    Config,
    ConfigTable,
    Objective,
    Slo,
    State,
    Where,
    choose,
    estimate_all,
    with_true_uplink,
)
from scheduler.scheduler import Scheduler, SchedulerParams
from scheduler.traces import last_index
from scheduler.uplink import Uplink
from splitinfer.encoding import FLOAT32, Encoding


@dataclass(frozen=True)
class Pick:
    """What a policy decided for one frame."""

    config: Config
    fallback: bool = False     # the cloud is considered down: device-only
    relief: bool = False       # run locally while the uplink is backlogged (dyno)
    chosen_key: str | None = None  # the scheduler's choice (differs from config on relief)
    est_mbps: float | None = None  # the bandwidth estimate it decided with


class Events:
    """Observations waiting for the time the runtime would have them."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def at(self, t: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), fn))

    def flush(self, t: float) -> None:
        while self._heap and self._heap[0][0] <= t:
            heapq.heappop(self._heap)[2]()


class StaticPolicy:
    """One configuration for every frame; learns nothing, never gives up on an upload."""

    scheduler: Scheduler | None = None

    def __init__(self, config: Config) -> None:
        self._pick = Pick(config)

    def pick(self, t0: float) -> Pick:
        return self._pick

    def upload_timeout_s(self, nbytes: float) -> float:
        return math.inf

    def slot_wait_budget_s(self) -> float:
        return math.inf

    # what a live runtime would observe; a static policy ignores it
    def on_device(self, t: float, split: str, ms: float, bits: int | None) -> None: ...
    def on_answer(self, t: float, split: str, nbytes: float, upload_s: float, rtt_ms: float,
                  tail_ms: float, queue_ms: float, load: float = 0.0, sent_s: float | None = None) -> None: ...
    def on_failure(self, t: float) -> None: ...
    def on_abandoned(self, t: float) -> None: ...


class OnlinePolicy(StaticPolicy):
    """The live scheduler (dyno, or Neurosurgeon's search space), probing the link itself."""

    def __init__(self, scheduler: Scheduler, uplink: Uplink, events: Events,
                 rtt_ms: float, jitter: Callable[[], float]) -> None:
        self.scheduler, self.uplink, self.events = scheduler, uplink, events
        self.rtt_ms, self.jitter = rtt_ms, jitter
        self.probe_bytes = 0.0

    def pick(self, t0: float) -> Pick:
        s = self.scheduler
        if s.probe_due(t0):
            self._probe(t0)
        d = s.decide(t0)
        c = s.table.configs[d.index]
        e = s.bandwidth.estimate_bps
        return Pick(c, d.fallback, d.relief, s.chosen.key if s.chosen is not None else c.key,
                    e / 1e6 if e else None)

    def _probe(self, t0: float) -> None:
        s = self.scheduler
        s.probe_started(t0)
        nbytes = float(s.probe_bytes())
        self.probe_bytes += nbytes
        up = self.uplink.send(t0, nbytes, s.upload_timeout_s(nbytes))
        if up.ok:
            r_ms = self.rtt_ms + self.jitter()
            acked = up.end_s + r_ms / 1e3
            self.events.at(acked, lambda a=acked, secs=acked - up.start_s, b=nbytes, r=r_ms: (
                s.observe_rtt(a, r), s.observe_upload(a, b, secs, probe=True, sent_s=up.start_s),
                s.observe_success(a)))
        else:
            self.events.at(up.end_s, lambda a=up.end_s: s.observe_failure(a, probe=True))

    def upload_timeout_s(self, nbytes: float) -> float:
        return self.scheduler.upload_timeout_s(nbytes)

    def slot_wait_budget_s(self) -> float:
        return self.scheduler.slot_wait_budget_s()

    def on_abandoned(self, t: float) -> None:
        self.events.at(t, self.scheduler.observe_abandoned)

    def on_device(self, t: float, split: str, ms: float, bits: int | None) -> None:
        s = self.scheduler
        self.events.at(t, (lambda: s.observe_device("full", ms)) if split == "full"
                       else (lambda: s.observe_device(split, ms, bits)))

    def on_answer(self, t: float, split: str, nbytes: float, upload_s: float, rtt_ms: float,
                  tail_ms: float, queue_ms: float, load: float = 0.0, sent_s: float | None = None) -> None:
        s = self.scheduler
        self.events.at(t, lambda: (s.observe_rtt(t, rtt_ms), s.observe_upload(t, nbytes, upload_s, sent_s=sent_s),
                                   s.observe_cloud(split, tail_ms, queue_ms),
                                   s.observe_cloud_load(load), s.observe_success(t)))

    def on_failure(self, t: float) -> None:
        self.events.at(t, lambda: self.scheduler.observe_failure(t))


class OraclePolicy(StaticPolicy):
    """dyno's decision procedure (core.py model, device relief) without hysteresis and with the
    truth instead of estimates: each payload's true transfer time on the trace from the moment
    its head is done, behind what is already queued, and the true in-flight count."""

    def __init__(self, table: ConfigTable, objective: Objective, slo: Slo, uplink: Uplink,
                 in_flight: list[float], *, rtt_ms: float, background_queue_ms: float,
                 pipeline_depth: int) -> None:
        self.table, self.objective, self.slo = table, objective, slo
        self.uplink, self.in_flight = uplink, in_flight  # shared with the engine, read only
        self.rtt_ms, self.queue_ms, self.depth = rtt_ms, background_queue_ms, pipeline_depth
        self.full = table.configs[table.full_index]
        mean_bps = uplink.trace.mean_bps
        self.cand = oracle_candidates(table, slo)
        self.p = estimate_all(table, State(mean_bps, rtt_ms, background_queue_ms,
                                           pipeline_depth=pipeline_depth)).take(self.cand)
        self.off = table.offload[self.cand] > 0
        self.cand_bytes = table.bytes[self.cand][self.off]
        self.throughput = any(m.value == "throughput" for m, _ in objective.weights) or \
            slo.min_throughput_fps is not None
        self.state = State(mean_bps, rtt_ms, background_queue_ms, pipeline_depth=pipeline_depth,
                           mix_full_ms=self.full.head_ms)

    def pick(self, t0: float) -> Pick:
        return Pick(self.table.configs[self._index(t0)])

    def _index(self, t0: float) -> int:
        p, off, up = self.p, self.off, self.uplink
        live = sorted(x for x in self.in_flight if x > t0)
        t_off = t0 if len(live) < self.depth else live[len(live) - self.depth]
        dev_done = np.where(off, t_off, t0) + p.device_ms / 1e3
        u0 = np.maximum(dev_done, up.free_s)
        cw = up.window(u0)
        j = last_index(up.trace, u0[off], self.cand_bytes, up.rtt_s, cw[off], up.index)
        t_last = np.maximum(up.trace.time_of(j), u0[off])
        up_ms = np.zeros(len(self.cand))
        up_ms[off] = (t_last - u0[off]) * 1e3
        wait_ms = (u0 - dev_done) * 1e3 * off
        lat = p.device_ms + wait_ms + up_ms + off * (self.rtt_ms + self.queue_ms) + p.cloud_ms
        k = choose(with_true_uplink(p, up_ms, lat, self.state), self.objective, self.slo).index
        if not off[k]:
            return int(self.cand[k])
        if len(live) >= self.depth:   # the in-flight limit: relieve if the device would idle
            idle_ms = (t_off - t0) * 1e3              # ...longer than the full model costs extra
            return self.table.full_index if idle_ms > self.full.head_ms - p.device_ms[k] else \
                int(self.cand[k])
        if self.throughput:
            relieve = wait_ms[k] > self.full.head_ms - p.device_ms[k] + up_ms[k]
        else:
            relieve = t0 + self.full.head_ms / 1e3 < t0 + lat[k] / 1e3
        return self.table.full_index if relieve else int(self.cand[k])


def neurosurgeon_table(table: ConfigTable) -> ConfigTable:
    """Device-only, cloud-only JPEG and float32 splits: Neurosurgeon's search space."""
    return table.select(lambda c: c.where is Where.CLOUD or c.encoding == FLOAT32)


def raw_input_table(table: ConfigTable, input_elements: int) -> ConfigTable:
    """The table with cloud-only sending the raw float32 input instead of a JPEG, as
    Neurosurgeon was published: no encode on the device, no decode in the cloud, no loss."""
    def raw(c: Config) -> Config:
        if c.where is not Where.CLOUD:
            return c
        return replace(c, pack_ms=0.0, unpack_ms=0.0, bytes=4.0 * input_elements, drop_pp=0.0)

    return ConfigTable.build(raw(c) for c in table.configs)


def fixed8_index(table: ConfigTable, objective: Objective, slo: Slo, bandwidth_bps: float,
                 rtt_ms: float, depth: int) -> int:
    """The 8-bit split that is best for the objective at a constant `bandwidth_bps`."""
    eight = [i for i, c in enumerate(table.configs)
             if c.where is Where.SPLIT and c.encoding == Encoding("quantized", 8)]
    if not eight:
        raise ValueError("the profile has no 8-bit configurations, so the fixed8 baseline is "
                         "undefined: profile bits=8 with `python -m converter.profile`")
    p = estimate_all(table, State(bandwidth_bps, rtt_ms, pipeline_depth=depth)).take(eight)
    return eight[choose(p, objective, slo).index]


def oracle_candidates(table: ConfigTable, slo: Slo) -> np.ndarray:
    """Indices of the configurations an oracle needs to consider: those within the accuracy
    and bytes bounds that no other configuration of the same split dominates (no more bytes,
    pack, unpack and accuracy drop; the same head and tail). Exact for every objective, since
    accuracy only enters as a bound; device-only is always kept."""
    keep = []
    for i, c in enumerate(table.configs):
        if c.where is Where.DEVICE:
            keep.append(i)
            continue
        if slo.max_drop_pp is not None and c.drop_pp > slo.max_drop_pp:
            continue
        if slo.max_bytes is not None and c.bytes > slo.max_bytes:
            continue
        dominated = any(
            j != i and o.split == c.split and o.where is c.where
            and (slo.max_drop_pp is None or o.drop_pp <= slo.max_drop_pp)
            and o.bytes <= c.bytes and o.pack_ms <= c.pack_ms and o.unpack_ms <= c.unpack_ms
            and (o.bytes, o.pack_ms, o.unpack_ms) != (c.bytes, c.pack_ms, c.unpack_ms)
            for j, o in enumerate(table.configs))
        if not dominated:
            keep.append(i)
    return np.asarray(keep, dtype=np.int64)


def online_scheduler(table: ConfigTable, dyno: bool, objective: Objective, slo: Slo,
                     params: SchedulerParams) -> Scheduler:
    """dyno: the scheduler as configured. Neurosurgeon as published: one split at a time for
    latency, float32 payloads, no per-frame device relief."""
    if dyno:
        return Scheduler(table, objective, slo, params)
    return Scheduler(neurosurgeon_table(table), Objective.single("latency"),
                     Slo(max_drop_pp=slo.max_drop_pp), replace(params, relief=False))
