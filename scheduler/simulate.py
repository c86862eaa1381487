"""Trace-driven simulator of split inference, and its CLI.

    python -m scheduler.simulate --bundle DIR --trace FILE --policy dyno --json

Frames flow through three FIFO stages: the device (head + pack, or the full model), the uplink
(the TCP-like transfer of scheduler.traces through the trace's delivery opportunities) and the
cloud (unpack + tail, on the cloud class). At most `pipeline_depth` frames are in flight; the
source is a camera at --fps (frames that would wait longer than one frame interval are dropped,
as a camera keeps only its latest frame) or, by default, as fast as the pipeline accepts them.

Online policies (dyno, neurosurgeon) drive a `Scheduler` with exactly the observations a live
runtime has, delivered at the time the runtime would have them: upload time and RTT when the
answer arrives, the server's tail and queue time, the device's own latency, failures when an
upload exceeds the scheduler's timeout (the frame is then run on the device). Static policies
(device, cloud, fixed8) never time out: they wait out outages, as a fixed deployment would; with
`static_fallback` (`--static-fallback`) cloud and fixed8 fall back as this project's edge does.
"""
from __future__ import annotations

import argparse
import heapq
import json
from collections import deque
import sys
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path

import numpy as np

from scheduler import devices
from scheduler.bundle import Bundle, load_bundle
from scheduler.core import ConfigTable, Objective, Slo, Where
from scheduler.scheduler import PinnedScheduler, SchedulerParams
from scheduler.sim_policies import (  # noqa: F401 (fixed8_index, neurosurgeon_table: public here too)
    Events,
    OnlinePolicy,
    OraclePolicy,
    StaticPolicy,
    fixed8_index,
    neurosurgeon_table,
    online_scheduler,
)
from scheduler.traces import Trace, TraceError, constant, outage, read_trace, step
from scheduler.uplink import Uplink
from splitinfer.bundle.manifest import FULL
from splitinfer.bundle.profile import DROP_ESTIMATES
from splitinfer.errors import FormatError


LOAD_WINDOW_S = 2.0  # as cloud_runtime.load.WINDOW_S


class Policy(str, Enum):
    DEVICE = "device"               # full model on the device
    CLOUD = "cloud"                 # JPEG upload, full model in the cloud
    NEUROSURGEON = "neurosurgeon"   # best split for latency, float32 payload, online
    FIXED8 = "fixed8"               # one 8-bit split chosen offline for the mean bandwidth
    DYNO = "dyno"                   # joint split and bits online (ours)
    ORACLE = "oracle"               # per frame, best config knowing the true transfer times


ONLINE = (Policy.DYNO, Policy.NEUROSURGEON)


@dataclass(frozen=True)
class SimParams:
    frames: int = 2000
    fps: float | None = None           # camera rate; None: as fast as possible
    duration_s: float | None = None    # stop once this much trace time has passed
    start_s: float = 0.0
    rtt_ms: float = 60.0               # true round trip (cellular: 40-80 ms)
    rtt_jitter_ms: float = 5.0
    background_queue_ms: float = 0.0   # other tenants' queueing at the server
    cloud_load: float = 0.0            # other tenants' share of the server (0..1): tails run
                                       # 1 / (1 - load) slower, and answers report the load
    pipeline_depth: int = 6
    # cloud and fixed8 as this project's edge runs them (`--policy cloud|fixed`): pinned to their
    # configuration, but frames go to the device while the cloud is down (upload timeouts, then
    # probes), exactly as dyno's do. False: they wait out outages, as a deployment without
    # fallback would (the baselines of the regime map and benchmarks.scheduler).
    static_fallback: bool = False
    noise: float = 0.03                # lognormal sigma of device and cloud compute times
    cwnd0: int = 10
    idle_restart_s: float = 0.2        # slow start again after the uplink idles this long
    oracle_window_s: float = 1.0       # the oracle knows the capacity over this much ahead
    seed: int = 0


@dataclass(frozen=True)
class FrameRecord:
    i: int
    t_s: float                # when the frame entered the device stage
    done_s: float
    latency_ms: float
    key: str
    split: str
    bits: int | None
    where: str
    depth: int
    bytes: float
    cloud_ms: float
    drop_pp: float
    est_mbps: float | None    # the scheduler's bandwidth estimate when it decided
    fallback: bool
    failed: bool              # offload timed out; ran on the device instead
    relief: bool = False      # ran locally while the uplink was backlogged (dyno)
    chosen_key: str = ""      # the scheduler's chosen configuration (differs on relief frames)


@dataclass
class SimResult:
    summary: dict
    timeline: list[FrameRecord] = field(default_factory=list)


def simulate(table: ConfigTable, trace: Trace, policy: Policy | str, objective: Objective,
             slo: Slo, params: SimParams = SimParams(),
             sched_params: SchedulerParams | None = None, keep_timeline: bool = True
             ) -> SimResult:
    """Replay `trace` with `policy` and summarise (see the module docstring for the model)."""
    policy = Policy(policy)
    run = _Run(table, trace, policy, objective, slo, params,
               replace(sched_params or SchedulerParams(), pipeline_depth=params.pipeline_depth))
    run.frames(keep_timeline)
    return SimResult(run.summary(), run.records)


class _Run:
    """One replay: the three stages' state, the policy, and what each frame cost."""

    def __init__(self, table: ConfigTable, trace: Trace, policy: Policy, objective: Objective,
                 slo: Slo, prm: SimParams, sched_params: SchedulerParams) -> None:
        self.table, self.trace, self.policy, self.objective, self.slo, self.prm = (
            table, trace, policy, objective, slo, prm)
        rng = np.random.default_rng(prm.seed)
        # compute times vary (lognormal); the RTT jitters: drawn in a fixed order per frame
        self.noise = (lambda: float(rng.lognormal(0.0, prm.noise))) if prm.noise > 0 else (lambda: 1.0)
        self.jitter = lambda: max(0.0, float(rng.normal(0.0, prm.rtt_jitter_ms)))
        self.rtt_s = prm.rtt_ms / 1e3
        self.background_s = prm.background_queue_ms / 1e3   # other tenants' queueing
        self.full = table.configs[table.full_index]
        self.t_begin = prm.start_s
        self.device_free = self.cloud_free = self.t_begin
        self.uplink = Uplink(trace, self.rtt_s, start_s=self.t_begin, cwnd0=prm.cwnd0,
                             idle_restart_s=prm.idle_restart_s)
        self.in_flight: list[float] = []   # heap: answer times of offloaded frames in flight
        # heap: (failed at, run s, frame index) of failed uploads whose local run has not had the
        # board yet: the board goes on with the next frames meanwhile (`_settle_fallbacks`)
        self.fallback_runs: list[tuple[float, float, int]] = []
        self.events = Events()
        self.choice = self._policy(sched_params)
        self.records: list[FrameRecord] = []
        self.lat: list[float] = []
        self.dones: list[float] = []
        self._busy: deque[tuple[float, float]] = deque()   # own tail work: (end, seconds)
        self.bytes: list[float] = []
        self.cloud_ms: list[float] = []
        self.drops: list[float] = []
        self.keys: list[str] = []
        self.depths: list[int] = []
        self.failures = self.fallback_frames = self.dropped = 0
        self.first_t: float | None = None
        self.last_done: float | None = None

    def _policy(self, sched_params: SchedulerParams):
        table, prm = self.table, self.prm
        if self.policy in ONLINE:
            sched = online_scheduler(table, self.policy is Policy.DYNO, self.objective, self.slo,
                                     sched_params)
            return OnlinePolicy(sched, self.uplink, self.events, prm.rtt_ms, self.jitter)
        if self.policy is Policy.DEVICE:
            return StaticPolicy(self.full)
        if self.policy is Policy.CLOUD:
            jpeg = next((c for c in table.configs if c.where is Where.CLOUD), None)
            if jpeg is None:
                raise ValueError("the cloud baseline needs the profile's jpeg entry")
            return self._static(jpeg, sched_params)
        if self.policy is Policy.FIXED8:
            return self._static(table.configs[fixed8_index(
                table, self.objective, self.slo, self.trace.mean_bps, prm.rtt_ms, prm.pipeline_depth)],
                sched_params)
        return OraclePolicy(table, self.objective, self.slo, self.uplink, self.in_flight,
                            rtt_ms=prm.rtt_ms, background_queue_ms=self.background_s * 1e3,
                            pipeline_depth=prm.pipeline_depth)

    def _static(self, config, sched_params: SchedulerParams):
        """One configuration; with `static_fallback`, pinned in the live scheduler as the edge
        runtime pins it (edge_runtime/policy.py), so it falls back and recovers the same way."""
        if not self.prm.static_fallback:
            return StaticPolicy(config)
        pinned = PinnedScheduler.of(self.table.select(lambda c: c.key == config.key), self.objective,
                                    self.slo, sched_params, self.policy.value)
        return OnlinePolicy(pinned, self.uplink, self.events, self.prm.rtt_ms, self.jitter)

    def frames(self, keep_timeline: bool) -> None:
        prm = self.prm
        for n in range(prm.frames if prm.fps is None else 10 ** 9):
            if len(self.records if keep_timeline else self.lat) >= prm.frames:
                break
            arrival = self.t_begin + n / prm.fps if prm.fps else None
            ready = self._settle_fallbacks(arrival)
            if arrival is not None:
                if ready - arrival > 1.0 / prm.fps:  # a camera keeps only its latest frame
                    self.dropped += 1
                    continue
                ready = max(ready, arrival)
            if prm.duration_s is not None and ready - self.t_begin > prm.duration_s:
                break
            self.events.flush(ready)
            self._frame(ready, arrival, keep_timeline)

    def _settle_fallbacks(self, arrival: float | None) -> float:
        """When the board is ready for the next frame, after the local runs of the uploads that
        failed by then: each takes the board from its failure, or from the end of the run the
        board was in (the runtime's device lock), and fixes its frame's answer time."""
        while True:
            ready = self.device_free if arrival is None else max(self.device_free, arrival)
            if not self.fallback_runs or self.fallback_runs[0][0] > ready:
                return self.device_free
            failed_s, run_s, i = heapq.heappop(self.fallback_runs)
            self.device_free = done = max(self.device_free, failed_s) + run_s
            self.lat[i] += (done - self.dones[i]) * 1e3
            self.dones[i] = done
            self.last_done = done if self.last_done is None else max(self.last_done, done)
            if i < len(self.records):
                self.records[i] = replace(self.records[i], done_s=done, latency_ms=self.lat[i])

    def _frame(self, t0: float, arrival: float | None, keep_timeline: bool) -> None:
        """One frame through device, uplink and cloud, from `t0` (the device is free)."""
        prm, full, choice = self.prm, self.full, self.choice
        t_arr = arrival if arrival is not None else t0
        pick = choice.pick(t0)
        c = pick.config
        dev_ms = (c.head_ms + c.pack_ms) * self.noise()
        dev_done = t0 + dev_ms / 1e3
        failed, cloud_ms = False, 0.0
        if c.where is Where.DEVICE:
            self.device_free = done = dev_done
            choice.on_device(done, FULL, dev_ms, None)
        else:
            # As the runtime does: the head and packing run from when the device is free, then
            # the upload waits for one of pipeline_depth slots (the oldest answer) with the device
            # holding it; past the wait budget the runtime finishes the frame on the device.
            while self.in_flight and self.in_flight[0] <= dev_done:
                heapq.heappop(self.in_flight)
            send = dev_done
            if len(self.in_flight) >= prm.pipeline_depth:
                send = heapq.nsmallest(len(self.in_flight) - prm.pipeline_depth + 1, self.in_flight)[-1]
            budget = choice.slot_wait_budget_s()
            choice.on_device(dev_done, c.split, dev_ms, c.bits)
            if send - dev_done > budget:   # no slot in time: the runtime finishes it on the device
                choice.on_abandoned(dev_done + budget)
                pick = replace(pick, config=full, relief=True)
                c = full
                self.device_free = done = dev_done + budget + full.head_ms * self.noise() / 1e3
            else:
                self.device_free = send
                up = self.uplink.send(send, c.bytes, choice.upload_timeout_s(c.bytes))
                if up.ok:
                    arrive = up.end_s + self.rtt_s / 2
                    cstart = max(arrive, self.cloud_free)
                    tail = c.tail_ms * self.noise() / (1.0 - min(prm.cloud_load, 0.99))
                    cloud_ms = c.unpack_ms + tail
                    self.cloud_free = cstart + cloud_ms / 1e3
                    r_ms = prm.rtt_ms + self.jitter()
                    done = self.cloud_free + self.background_s + r_ms / 2e3
                    choice.on_answer(done, c.split, c.bytes, up.end_s - up.start_s + r_ms / 1e3, r_ms,
                                     tail, (cstart - arrive + self.background_s) * 1e3,
                                     self._utilisation(self.cloud_free, cloud_ms / 1e3), sent_s=up.start_s)
                else:   # the upload outlasted the scheduler's timeout: the device finishes it
                    failed = True
                    self.failures += 1
                    choice.on_failure(up.end_s)
                    # As the runtime does: the board went on with the next frames while this
                    # upload hung, and the sender runs the frame on it once the upload failed,
                    # between two of them. `done` is settled when the run gets the board.
                    run_s = full.head_ms * self.noise() / 1e3
                    done = up.end_s + run_s
                    heapq.heappush(self.fallback_runs, (up.end_s, run_s, len(self.lat)))
                heapq.heappush(self.in_flight, done)
        self.fallback_frames += pick.fallback
        self.first_t = t_arr if self.first_t is None else self.first_t
        self.last_done = done if self.last_done is None else max(self.last_done, done)
        latency = (done - t_arr) * 1e3
        drop = 0.0 if failed else c.drop_pp
        self.lat.append(latency)
        self.dones.append(done)
        self.bytes.append(c.bytes)
        self.cloud_ms.append(cloud_ms)
        self.drops.append(drop)
        self.keys.append(c.key)
        self.depths.append(c.depth)
        if keep_timeline:
            self.records.append(FrameRecord(
                len(self.lat) - 1, t0, done, latency, c.key, c.split, c.bits, c.where.value,
                c.depth, c.bytes, cloud_ms, drop, pick.est_mbps, pick.fallback, failed,
                pick.relief, pick.chosen_key or c.key))

    def _utilisation(self, t: float, busy_s: float) -> float:
        """What the server reports (cloud_runtime/load.py): others' share plus this device's
        tail time over the last LOAD_WINDOW_S."""
        self._busy.append((t, busy_s))
        while self._busy and self._busy[0][0] < t - LOAD_WINDOW_S:
            self._busy.popleft()
        own = sum(b for _, b in self._busy) / LOAD_WINDOW_S
        return min(1.0, self.prm.cloud_load + own)

    def summary(self) -> dict:
        prm, slo, sched = self.prm, self.slo, self.choice.scheduler
        frames = len(self.lat)
        if frames == 0:
            raise ValueError(f"no frame was processed: the trace or --duration-s ({prm.duration_s}) "
                             f"is too short for one frame")
        span = max(self.last_done - self.first_t, 1e-9)
        la = np.asarray(self.lat)
        shares: dict[str, int] = {}
        for k in self.keys:
            shares[k] = shares.get(k, 0) + 1
        probe_bytes = getattr(self.choice, "probe_bytes", 0.0)
        return {
            "policy": self.policy.value,
            "objective": self.objective.label,
            "slo": {k: v for k, v in asdict(slo).items() if v is not None},
            "trace": self.trace.name,
            "frames": frames,
            "dropped_frames": self.dropped,
            "sim_seconds": round(span, 3),
            "throughput_fps": frames / span,
            # with a duration: frames answered within it, per second of it (steady state: a frame
            # still stuck in a stalled upload at the end costs latency, not throughput)
            "window_fps": (float(np.sum(np.asarray(self.dones) <= prm.start_s + prm.duration_s))
                           / prm.duration_s if prm.duration_s else frames / span),
            "latency_ms_mean": float(la.mean()),
            "latency_ms_p50": float(np.percentile(la, 50)),
            "latency_ms_p95": float(np.percentile(la, 95)),
            "latency_ms_p99": float(np.percentile(la, 99)),
            "bytes_per_frame": float(np.mean(self.bytes)),
            "probe_bytes_per_frame": probe_bytes / frames,
            "cloud_ms_per_frame": float(np.mean(self.cloud_ms)),
            "accuracy_drop_pp": float(np.mean(self.drops)),
            # online policies: switches of the chosen configuration (relief frames are not one)
            "switches": (sched.switches if sched is not None
                         else int(sum(a != b for a, b in zip(self.keys, self.keys[1:])))),
            "relief_frames": sched.relief_frames if sched is not None else 0,
            "failures": self.failures,
            "fallback_frames": self.fallback_frames,
            "slo_latency_met": (float(np.mean(la <= slo.max_latency_ms))
                                if slo.max_latency_ms is not None else None),
            "mean_split_depth": float(np.mean(self.depths)),
            "configs": dict(sorted(shares.items(), key=lambda kv: -kv[1])[:8]),
            "trace_mean_mbps": self.trace.mean_bps / 1e6,
        }


# --- CLI ------------------------------------------------------------------------------------

def parse_trace(spec: str) -> Trace:
    """A file, or synthetic:const:MBPS[:DUR], synthetic:step:A:B:AT:DUR,
    synthetic:outage:MBPS:START:END:DUR."""
    if not spec.startswith("synthetic:"):
        return read_trace(Path(spec))
    parts = spec.split(":")[1:]
    kind, nums = parts[0], parts[1:]
    try:
        v = [float(x) for x in nums]
        if kind == "const" and len(v) in (1, 2):
            return constant(v[0], v[1] if len(v) == 2 else 300.0)
        if kind == "step" and len(v) == 4:
            return step(*v)
        if kind == "outage" and len(v) == 4:
            return outage(*v)
    except ValueError:
        pass
    raise TraceError(f"bad synthetic trace {spec!r}: expected synthetic:const:MBPS[:DUR], "
                     f"synthetic:step:BEFORE:AFTER:AT_S:DUR_S or "
                     f"synthetic:outage:MBPS:START_S:END_S:DUR_S")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m scheduler.simulate",
                                 description="Replay an uplink trace with a scheduling policy.")
    ap.add_argument("--bundle", type=Path, help="bundle directory (manifest.json, profile.json)")
    ap.add_argument("--trace", help="Mahimahi .up file, 'time_s mbit_s' file, or synthetic:...")
    ap.add_argument("--policy", default="dyno", help=f"one of {[p.value for p in Policy]}")
    ap.add_argument("--static-fallback", action="store_true",
                    help="cloud and fixed8 fall back to the device in outages, as the edge runtime's "
                         "--policy cloud|fixed does (default: they wait outages out)")
    ap.add_argument("--pipeline-depth", type=int, default=SimParams.pipeline_depth,
                    help="offloaded frames in flight at most")
    ap.add_argument("--profile", type=Path, help="profile.json (default DIR/profile.json)")
    ap.add_argument("--device-profile", type=Path,
                    help="device profile (default DIR/device-this-machine.json)")
    ap.add_argument("--device", default=devices.DEFAULT_DEVICE,
                    help=f"device class (default {devices.DEFAULT_DEVICE}; see --list-devices)")
    ap.add_argument("--cloud", default=devices.DEFAULT_CLOUD, help="cloud class")
    ap.add_argument("--frames", type=int, default=2000)
    ap.add_argument("--fps", type=float, help="camera rate (default: as fast as possible)")
    ap.add_argument("--duration-s", type=float, help="stop after this much trace time")
    ap.add_argument("--start-s", type=float, default=0.0, help="start this far into the trace")
    ap.add_argument("--rtt-ms", type=float, default=SimParams.rtt_ms)
    ap.add_argument("--objective", default="latency",
                    help="latency | throughput | cloud | bytes, or weights 'latency=0.7,bytes=0.3'")
    ap.add_argument("--slo-ms", type=float, help="max latency (ms)")
    ap.add_argument("--max-drop-pp", type=float, help="max accuracy drop (percentage points)")
    ap.add_argument("--drop-estimate", choices=DROP_ESTIMATES, default="upper",
                    help="which profiled drop --max-drop-pp bounds: the upper confidence "
                    "bound (default: the SLO holds on unseen images) or the point estimate")
    ap.add_argument("--max-bytes", type=float, help="max bytes per frame")
    ap.add_argument("--min-fps", type=float, help="min throughput (frames/s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--timeline", type=Path, help="write the per-frame timeline (JSON) here")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    ap.add_argument("--list-devices", action="store_true", help="list device and cloud classes")
    return ap


def run_cli(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.list_devices:
        print(devices.describe())
        return 0
    if args.bundle is None or args.trace is None:
        raise ValueError("--bundle DIR and --trace FILE are required (or --list-devices)")
    try:
        policy = Policy(args.policy)
    except ValueError:
        raise ValueError(f"unknown policy {args.policy!r}: expected one of "
                         f"{[p.value for p in Policy]}") from None
    if args.frames < 1:
        raise ValueError(f"--frames must be >= 1, got {args.frames}")
    dev = devices.device_class(args.device)
    cloud = devices.cloud_class(args.cloud)
    bundle: Bundle = load_bundle(args.bundle, args.profile, args.device_profile,
                                  drop_estimate=args.drop_estimate)
    factor = bundle.device_factor(dev)
    if bundle.device_estimated:
        print(f"note: {args.bundle} has no device profile; head latencies are estimated from the "
              f"manifest's FLOPs, scaled to {dev.name} by the reference model's FLOPs "
              f"(x {factor:.2f} over {devices.THIS_MACHINE_FLOPS_PER_S:.3g} FLOP/s)", file=sys.stderr)
    trace = parse_trace(args.trace)
    slo = Slo(args.slo_ms, args.max_drop_pp, args.max_bytes, args.min_fps)
    res = simulate(bundle.table_for(dev, cloud), trace, policy, Objective.parse(args.objective),
                   slo, SimParams(frames=args.frames, fps=args.fps, duration_s=args.duration_s,
                                  start_s=args.start_s, rtt_ms=args.rtt_ms, seed=args.seed,
                                  pipeline_depth=args.pipeline_depth,
                                  static_fallback=args.static_fallback),
                   keep_timeline=True)
    res.summary.update(device=dev.name, device_factor=factor, cloud=cloud.name,
                       bundle=str(args.bundle), device_profile=(
                           "estimated from FLOPs" if bundle.device_estimated else bundle.device.device))
    if args.timeline:
        args.timeline.parent.mkdir(parents=True, exist_ok=True)
        args.timeline.write_text(json.dumps([asdict(r) for r in res.timeline]))
    if args.json:
        print(json.dumps(res.summary, indent=2))
    else:
        s = res.summary
        print(f"{s['policy']} on {s['trace']} ({dev.name}, {cloud.name}): {s['frames']} frames, "
              f"{s['throughput_fps']:.1f} fps, latency mean {s['latency_ms_mean']:.1f} ms "
              f"p95 {s['latency_ms_p95']:.1f} ms, {s['bytes_per_frame']:.0f} B/frame, "
              f"cloud {s['cloud_ms_per_frame']:.2f} ms/frame, drop {s['accuracy_drop_pp']:.2f} pp, "
              f"{s['switches']} switches")
    return 0


def main(argv: list[str] | None = None) -> int:
    try:
        return run_cli(argv)
    except (FormatError, TraceError, ValueError, OSError) as e:
        print(f"scheduler.simulate: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
