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
(device, cloud, fixed8) never time out: they wait out outages, as a fixed deployment would.
"""
from __future__ import annotations

import argparse
import heapq
import itertools
import json
import math
import sys
from dataclasses import asdict, dataclass, field, replace
from enum import Enum
from pathlib import Path
from typing import Callable

import numpy as np

from scheduler import devices
from scheduler.bundle import Bundle, load_bundle
from scheduler.core import (
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
from scheduler.traces import (
    Trace,
    TraceError,
    constant,
    last_index,
    outage,
    read_trace,
    step,
    transfer,
)
from splitinfer.errors import FormatError


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
    pipeline_depth: int = 6
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


class _Events:
    """Observations waiting for the time the runtime would have them."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()

    def at(self, t: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._heap, (t, next(self._seq), fn))

    def flush(self, t: float) -> None:
        while self._heap and self._heap[0][0] <= t:
            heapq.heappop(self._heap)[2]()


def neurosurgeon_table(table: ConfigTable) -> ConfigTable:
    """Device-only, cloud-only JPEG and float32 splits: Neurosurgeon's search space."""
    return table.select(lambda c: c.where is Where.CLOUD or c.bits == 32)


def fixed8_index(table: ConfigTable, objective: Objective, slo: Slo, bandwidth_bps: float,
                 rtt_ms: float, depth: int) -> int:
    """The 8-bit split that is best for the objective at a constant `bandwidth_bps`."""
    eight = [i for i, c in enumerate(table.configs) if c.where is Where.SPLIT and c.bits == 8]
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


def simulate(table: ConfigTable, trace: Trace, policy: Policy | str, objective: Objective,
             slo: Slo, params: SimParams = SimParams(),
             sched_params: SchedulerParams | None = None, keep_timeline: bool = True
             ) -> SimResult:
    """Replay `trace` with `policy` and summarise (see the module docstring for the model)."""
    policy = Policy(policy)
    prm = params
    rng = np.random.default_rng(prm.seed)
    sp = replace(sched_params or SchedulerParams(), pipeline_depth=prm.pipeline_depth)
    rtt = prm.rtt_ms / 1e3
    configs = table.configs
    full = configs[table.full_index]
    jpeg_i = next((i for i, c in enumerate(configs) if c.where is Where.CLOUD), None)
    if policy is Policy.CLOUD and jpeg_i is None:
        raise ValueError("the cloud baseline needs the profile's jpeg entry")

    sched: Scheduler | None = None
    if policy is Policy.DYNO:
        sched = Scheduler(table, objective, slo, sp)
    elif policy is Policy.NEUROSURGEON:
        # Neurosurgeon as published: one split at a time, no per-frame device relief
        sched = Scheduler(neurosurgeon_table(table), Objective.single("latency"),
                          Slo(max_drop_pp=slo.max_drop_pp), replace(sp, relief=False))
    fixed = None
    if policy is Policy.FIXED8:
        fixed = fixed8_index(table, objective, slo, trace.mean_bps, prm.rtt_ms, prm.pipeline_depth)

    ev = _Events()
    noise = (lambda: float(rng.lognormal(0.0, prm.noise))) if prm.noise > 0 else (lambda: 1.0)
    jitter = (lambda: max(0.0, float(rng.normal(0.0, prm.rtt_jitter_ms))))
    t_begin = prm.start_s
    device_free = uplink_free = cloud_free = t_begin
    up_index = int(trace.index_at(t_begin))
    up_last_end, cwnd = -math.inf, prm.cwnd0
    in_flight: list[float] = []      # heap: answer times of offloaded frames in flight
    records: list[FrameRecord] = []
    lat, byt, cms, drops, keys, depths = [], [], [], [], [], []
    probe_bytes = 0.0
    failures = fallback_frames = dropped = 0
    first_t = last_done = None
    bgq = prm.background_queue_ms / 1e3

    def upload(t0: float, nbytes: float) -> tuple[float, float, bool]:
        """Start an upload at or after t0; (start, last delivery or abort time, ok)."""
        nonlocal uplink_free, up_index, up_last_end, cwnd
        u0 = max(t0, uplink_free)
        cw = cwnd if u0 - up_last_end < prm.idle_restart_s else prm.cwnd0
        tr = transfer(trace, u0, nbytes, rtt, cwnd0=cw, min_index=up_index)
        timeout = sched.upload_timeout_s(nbytes) if sched is not None else math.inf
        if tr.acked_s - u0 > timeout:
            abort = u0 + timeout
            up_index = max(up_index, int(trace.index_at(abort)))
            uplink_free = up_last_end = abort
            cwnd = prm.cwnd0
            return u0, abort, False
        up_index, uplink_free, up_last_end, cwnd = tr.next_index, tr.last_delivery_s, \
            tr.last_delivery_s, tr.cwnd_end
        return u0, tr.last_delivery_s, True

    cand = oracle_candidates(table, slo)
    p_cand = estimate_all(table, State(trace.mean_bps, prm.rtt_ms, bgq * 1e3,
                                      pipeline_depth=prm.pipeline_depth)).take(cand)
    off = table.offload[cand] > 0
    cand_bytes = table.bytes[cand][off]

    thr_objective = any(m.value == "throughput" for m, _ in objective.weights) or \
        slo.min_throughput_fps is not None
    oracle_state = State(trace.mean_bps, prm.rtt_ms, bgq * 1e3, pipeline_depth=prm.pipeline_depth,
                         mix_full_ms=full.head_ms)

    def oracle_index(t0: float) -> int:
        """dyno's decision procedure (core.py model, device relief) without hysteresis and with
        the truth instead of estimates: each payload's true transfer time on the trace from the
        moment its head is done, behind what is already queued, and the true in-flight count."""
        p = p_cand
        live = sorted(x for x in in_flight if x > t0)
        t_off = t0 if len(live) < prm.pipeline_depth else live[len(live) - prm.pipeline_depth]
        dev_done = np.where(off, t_off, t0) + p.device_ms / 1e3
        u0 = np.maximum(dev_done, uplink_free)
        cw = np.where(u0 - up_last_end < prm.idle_restart_s, cwnd, prm.cwnd0)
        j = last_index(trace, u0[off], cand_bytes, rtt, cw[off], up_index)
        t_last = np.maximum(trace.time_of(j), u0[off])
        up_ms = np.zeros(len(cand))
        up_ms[off] = (t_last - u0[off]) * 1e3
        wait_ms = (u0 - dev_done) * 1e3 * off
        lat = p.device_ms + wait_ms + up_ms + off * (prm.rtt_ms + bgq * 1e3) + p.cloud_ms
        k = choose(with_true_uplink(p, up_ms, lat, oracle_state), objective, slo).index
        if not off[k]:
            return int(cand[k])
        if len(live) >= prm.pipeline_depth:
            return table.full_index                   # relief: the in-flight limit is reached
        if thr_objective:
            relieve = wait_ms[k] > full.head_ms - p.device_ms[k] + up_ms[k]
        else:
            relieve = t0 + full.head_ms / 1e3 < t0 + lat[k] / 1e3
        return table.full_index if relieve else int(cand[k])

    for n in range(prm.frames if prm.fps is None else 10 ** 9):
        if len(records if keep_timeline else lat) >= prm.frames:
            break
        arrival = t_begin + n / prm.fps if prm.fps else None
        ready = device_free
        if arrival is not None:
            if ready - arrival > 1.0 / prm.fps:
                dropped += 1
                continue
            ready = max(ready, arrival)
        t0 = ready
        t_arr = arrival if arrival is not None else t0
        if prm.duration_s is not None and t0 - t_begin > prm.duration_s:
            break
        ev.flush(t0)

        est = None
        fallback = relief = False
        chosen = None
        if sched is not None:
            if sched.probe_due(t0):
                sched.probe_started(t0)
                pb = float(sched.probe_bytes())
                probe_bytes += pb
                p0, p_end, ok = upload(t0, pb)
                if ok:
                    r_ms = prm.rtt_ms + jitter()
                    acked = p_end + r_ms / 1e3
                    ev.at(acked, lambda a=acked, s=acked - p0, pb=pb, r=r_ms: (
                        sched.observe_rtt(a, r), sched.observe_upload(a, pb, s, probe=True),
                        sched.observe_success(a)))
                else:
                    ev.at(p_end, lambda a=p_end: sched.observe_failure(a, probe=True))
            d = sched.decide(t0)
            c = sched.table.configs[d.index]
            fallback, relief = d.fallback, d.relief
            chosen = sched.chosen.key if sched.chosen is not None else c.key
            e = sched.bandwidth.estimate_bps
            est = e / 1e6 if e else None
        elif policy is Policy.DEVICE:
            c = full
        elif policy is Policy.CLOUD:
            c = configs[jpeg_i]
        elif policy is Policy.FIXED8:
            c = configs[fixed]
        else:
            c = configs[oracle_index(t0)]

        if c.where is not Where.DEVICE:
            # at most pipeline_depth offloaded frames in flight: wait for the oldest answer
            while in_flight and in_flight[0] <= t0:
                heapq.heappop(in_flight)
            if len(in_flight) >= prm.pipeline_depth:
                t0 = heapq.nsmallest(len(in_flight) - prm.pipeline_depth + 1, in_flight)[-1]
                t_arr = t_arr if arrival is not None else t0
        slow = noise()
        dev_ms = (c.head_ms + c.pack_ms) * slow
        dev_done = t0 + dev_ms / 1e3
        device_free = dev_done
        failed = False
        cloud_ms = 0.0
        if c.where is Where.DEVICE:
            done = dev_done
            if sched is not None:
                ev.at(done, lambda m=dev_ms: sched.observe_device("full", m))
        else:
            if sched is not None:
                ev.at(dev_done, lambda s=c.split, m=dev_ms, b=c.bits: sched.observe_device(s, m, b))
            u0, u_end, ok = upload(dev_done, c.bytes)
            if ok:
                arrive = u_end + rtt / 2
                cstart = max(arrive, cloud_free)
                tail = c.tail_ms * noise()
                cloud_ms = c.unpack_ms + tail
                cloud_free = cstart + cloud_ms / 1e3
                r_ms = prm.rtt_ms + jitter()
                done = cloud_free + bgq + r_ms / 2e3
                if sched is not None:
                    q_ms = (cstart - arrive + bgq) * 1e3
                    secs = u_end - u0 + r_ms / 1e3
                    ev.at(done, lambda a=done, s=c.split, b=c.bytes, secs=secs, r=r_ms,
                          t=tail, q=q_ms: (sched.observe_rtt(a, r), sched.observe_upload(a, b, secs),
                                           sched.observe_cloud(s, t, q), sched.observe_success(a)))
            else:
                failed = True
                failures += 1
                ev.at(u_end, lambda a=u_end: sched.observe_failure(a))
                start = max(u_end, device_free)
                local = full.head_ms * noise()
                device_free = done = start + local / 1e3
        if fallback:
            fallback_frames += 1
        if c.where is not Where.DEVICE:
            heapq.heappush(in_flight, done)
        first_t = t_arr if first_t is None else first_t
        last_done = done if last_done is None else max(last_done, done)
        latency = (done - t_arr) * 1e3
        drop = 0.0 if failed else c.drop_pp
        lat.append(latency)
        byt.append(c.bytes)
        cms.append(cloud_ms)
        drops.append(drop)
        keys.append(c.key)
        depths.append(c.depth)
        if keep_timeline:
            records.append(FrameRecord(len(lat) - 1, t0, done, latency, c.key, c.split, c.bits,
                                       c.where.value, c.depth, c.bytes, cloud_ms, drop, est,
                                       fallback, failed, relief, chosen or c.key))

    nfr = len(lat)
    if nfr == 0:
        raise ValueError(f"no frame was processed: the trace or --duration-s ({prm.duration_s}) "
                         f"is too short for one frame")
    span = max(last_done - first_t, 1e-9)
    la = np.asarray(lat)
    shares: dict[str, int] = {}
    for k in keys:
        shares[k] = shares.get(k, 0) + 1
    summary = {
        "policy": policy.value,
        "objective": objective.label,
        "slo": {k: v for k, v in asdict(slo).items() if v is not None},
        "trace": trace.name,
        "frames": nfr,
        "dropped_frames": dropped,
        "sim_seconds": round(span, 3),
        "throughput_fps": nfr / span,
        "latency_ms_mean": float(la.mean()),
        "latency_ms_p50": float(np.percentile(la, 50)),
        "latency_ms_p95": float(np.percentile(la, 95)),
        "latency_ms_p99": float(np.percentile(la, 99)),
        "bytes_per_frame": float(np.mean(byt)),
        "probe_bytes_per_frame": probe_bytes / nfr,
        "cloud_ms_per_frame": float(np.mean(cms)),
        "accuracy_drop_pp": float(np.mean(drops)),
        # online policies: switches of the chosen configuration (relief frames are not one)
        "switches": (sched.switches if sched is not None
                     else int(sum(a != b for a, b in zip(keys, keys[1:])))),
        "relief_frames": sched.relief_frames if sched is not None else 0,
        "failures": failures,
        "fallback_frames": fallback_frames,
        "slo_latency_met": (float(np.mean(la <= slo.max_latency_ms))
                            if slo.max_latency_ms is not None else None),
        "mean_split_depth": float(np.mean(depths)),
        "configs": dict(sorted(shares.items(), key=lambda kv: -kv[1])[:8]),
        "trace_mean_mbps": trace.mean_bps / 1e6,
    }
    return SimResult(summary, records)


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
    ap.add_argument("--pipeline-depth", type=int, default=SimParams.pipeline_depth,
                    help="offloaded frames in flight at most")
    ap.add_argument("--profile", type=Path, help="profile.json (default DIR/profile.json)")
    ap.add_argument("--device-profile", type=Path,
                    help="device profile (default DIR/device-this-machine.json)")
    ap.add_argument("--device", default=devices.slowest_device(),
                    help=f"device class (default the slowest, {devices.slowest_device()})")
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
    bundle: Bundle = load_bundle(args.bundle, args.profile, args.device_profile)
    if bundle.device_estimated:
        print(f"note: {args.bundle} has no device profile; head latencies are estimated from the "
              f"manifest's FLOPs at {devices.THIS_MACHINE_FLOPS_PER_S:.3g} FLOP/s (this machine) "
              f"x {dev.factor:.2f} ({dev.name})", file=sys.stderr)
    trace = parse_trace(args.trace)
    slo = Slo(args.slo_ms, args.max_drop_pp, args.max_bytes, args.min_fps)
    res = simulate(bundle.table(dev.factor, cloud), trace, policy, Objective.parse(args.objective),
                   slo, SimParams(frames=args.frames, fps=args.fps, duration_s=args.duration_s,
                                  start_s=args.start_s, rtt_ms=args.rtt_ms, seed=args.seed,
                                  pipeline_depth=args.pipeline_depth),
                   keep_timeline=True)
    res.summary.update(device=dev.name, device_factor=dev.factor, cloud=cloud.name,
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
