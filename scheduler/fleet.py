"""python -m scheduler.fleet: many devices of mixed classes, each on its own link, sharing one cloud.

    python -m scheduler.fleet --bundle build/fashion --devices 1000 \\
        --mix rpi4:0.5,phone-low:0.3,pi-zero2:0.2 --link lte --policy dyno-onload --json

A fluid model in ticks (default 100 ms), vectorised over devices, so a thousand devices over a
minute of trace take seconds. Per tick and device:
  * the link's capacity this tick, from the device's own trace at its own random offset;
  * the device's scheduler decides with what it has seen: a bandwidth estimate that follows the
    truth with a lag (`estimate_lag_s`), the cloud's reported utilisation and queue wait from the
    previous tick, and hysteresis (it keeps its configuration unless another is `margin` better);
  * the outcome uses the truth: the scheduler's own model (scheduler/core.py: three pipelined
    stages, `pipeline_depth` frames in flight, device relief for dyno) with this tick's capacity
    and this tick's cloud queue, capped at the camera's rate.
The cloud is `replicas` servers of the cloud class. Their tail work is what saturates (unpack and
JPEG decode run on the servers' CPUs, assumed not to). Under load a server batches: a batch of b
costs (1 + gamma (b - 1)) single-frame tails, and it uses the smallest batch, up to MAX_BATCH,
that keeps up (gamma per cloud class in BATCH_COST). Work beyond that capacity queues (a backlog
every offloaded frame waits behind); below it, an M/M/1-like wait tail x rho / (1 - rho).

Policies: device, cloud (JPEG), neurosurgeon (latency-optimal, float32 payloads), dyno (maximum
throughput under the latency and accuracy SLOs) and dyno-onload (the least cloud compute that
keeps the throughput dyno would get and the SLOs).

Every frame the cameras offer is either processed or skipped (the camera keeps only its latest
frame while the pipeline is busy): `frames_offered == frames_processed + frames_skipped`.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from scheduler import devices
from scheduler.bundle import Bundle, load_bundle
from scheduler.core import ConfigTable, Where
from scheduler.links import LINKS, link_class, link_trace
from scheduler.sim_policies import neurosurgeon_table
from scheduler.traces import Trace, TraceError, read_trace
from splitinfer.bundle.profile import DROP_ESTIMATES
from splitinfer.errors import FormatError

POLICIES = ("device", "cloud", "neurosurgeon", "dyno", "dyno-onload")
MAX_LOAD = 0.95
MAX_BATCH = 8   # the server's default --max-batch
# Extra cost of each further frame in a batch, as a share of a single-frame tail.
#  cpu: measured here, benchmarks.cloud_load: 2.06x the requests/s at 16 clients with batches of
#       about 8, so 8 / (1 + 7 gamma) = 2.06 -> gamma = 0.41.
#  gpu: our assumption (no like-for-like figure found): batches of 8 give about 5x a batch of 1.
BATCH_COST = {"cpu": 0.41, "gpu": 0.1}


def served_utilisation(rho1: float, gamma: float, max_batch: int = MAX_BATCH) -> float:
    """Utilisation of a server offered `rho1` (the load at batch 1) that batches as needed:
    the smallest batch b with rho1 (1 + gamma (b - 1)) / b <= 1, else max_batch's."""
    if rho1 <= 1.0:
        return rho1
    for b in range(2, max_batch + 1):
        rho = rho1 * (1.0 + gamma * (b - 1)) / b
        if rho <= 1.0:
            return rho
    return rho1 * (1.0 + gamma * (max_batch - 1)) / max_batch


@dataclass(frozen=True)
class FleetParams:
    devices: int = 100
    mix: tuple[tuple[str, float], ...] = (("rpi4", 1.0),)
    duration_s: float = 60.0
    tick_s: float = 0.1
    camera_fps: float = 30.0
    slo_ms: float = 300.0
    max_drop_pp: float = 1.0
    replicas: int = 1
    pipeline_depth: int = 6
    rtt_ms: float | None = None      # None: each link class's own
    margin: float = 0.10             # hysteresis: switch only for this much better
    estimate_lag_s: float = 1.0      # the bandwidth estimate's time constant
    cloud: str = "gpu"
    seed: int = 0
    offsets_s: tuple[float, ...] = ()  # each device's start in its trace (default: random)


def parse_mix(spec: str) -> tuple[tuple[str, float], ...]:
    """'rpi4:0.5,phone-low:0.5' -> (('rpi4', 0.5), ('phone-low', 0.5)); shares sum to 1."""
    out = []
    for part in spec.split(","):
        name, _, share = part.strip().partition(":")
        devices.device_class(name)  # one-line error naming the known classes
        try:
            value = float(share) if share else 1.0
        except ValueError:
            raise ValueError(f"device mix {spec!r}: share {share!r} of {name} is not a number") from None
        if not value > 0:
            raise ValueError(f"device mix {spec!r}: share of {name} must be > 0")
        out.append((name, value))
    total = sum(v for _, v in out)
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"device mix {spec!r}: shares sum to {total:g}, expected 1")
    return tuple(out)


def assign_classes(params: FleetParams) -> list[str]:
    """Each device's class: the mix's shares, rounded so the counts add up (largest remainder)."""
    raw = [(name, share * params.devices) for name, share in params.mix]
    counts = {name: int(math.floor(x)) for name, x in raw}
    rest = params.devices - sum(counts.values())
    for name, x in sorted(raw, key=lambda kv: -(kv[1] - math.floor(kv[1])))[:rest]:
        counts[name] += 1
    return [name for name, _ in params.mix for _ in range(counts[name])]


@dataclass
class _Group:
    """The devices of one class and their configuration table, as arrays."""

    name: str
    members: np.ndarray
    device_ms: np.ndarray
    bits: np.ndarray
    unpack_ms: np.ndarray
    tail_ms: np.ndarray
    drop_pp: np.ndarray
    offload: np.ndarray
    allowed: np.ndarray     # configurations the policy may use
    full: int


def _group(name: str, members: np.ndarray, bundle: Bundle, cloud, policy: str) -> _Group:
    table: ConfigTable = bundle.table_for(devices.device_class(name), cloud)
    n = len(table.configs)
    if policy == "device":
        allowed = np.array([c.where is Where.DEVICE for c in table.configs])
    elif policy == "cloud":
        allowed = np.array([c.where is Where.CLOUD for c in table.configs])
    elif policy == "neurosurgeon":
        keep = {c.key for c in neurosurgeon_table(table).configs}
        allowed = np.array([c.key in keep for c in table.configs])
    else:
        allowed = np.ones(n, dtype=bool)
    if not allowed.any():
        raise ValueError(f"policy {policy}: the bundle has no configuration for it")
    return _Group(name, members, table.device_ms.copy(), table.bits_out.copy(),
                  table.unpack_ms.copy(), table.tail_ms.copy(), table.drop_pp.copy(),
                  table.offload.copy(), allowed, table.full_index)


def _rates(traces: list[Trace], params: FleetParams, rng: np.random.Generator
           ) -> tuple[np.ndarray, list[int]]:
    """[devices, ticks] capacity in bit/s: each device on a trace at a random offset."""
    ticks = int(round(params.duration_s / params.tick_s))
    per_trace = []
    for tr in traces:
        span = max(tr.duration_s, params.duration_s)
        per_trace.append(tr.rates_mbps(params.tick_s, span) * 1e6)
    which = rng.integers(0, len(traces), params.devices)
    out = np.empty((params.devices, ticks))
    for d in range(params.devices):
        series = per_trace[which[d]]
        start = (int(round(params.offsets_s[d] / params.tick_s)) if params.offsets_s
                 else int(rng.integers(0, len(series))))
        out[d] = series[(start + np.arange(ticks)) % len(series)]
    return out, which.tolist()


def _predict(g: _Group, bw: np.ndarray, rtt_ms: np.ndarray, queue_ms: float, cloud_scale: float,
             params: FleetParams, relief: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """[members, configs] latency ms, frames/s (camera-capped) and cloud ms per frame."""
    device = np.broadcast_to(g.device_ms, (len(bw), len(g.device_ms)))
    uplink = g.bits[None, :] * 1000.0 / np.maximum(bw[:, None], 1.0)
    cloud = np.broadcast_to(g.unpack_ms + g.tail_ms * cloud_scale, device.shape)
    off = g.offload[None, :]
    latency = device + uplink + cloud + off * (rtt_ms[:, None] + queue_ms)
    stage = np.maximum(np.maximum(device, uplink * off), cloud * off)
    fps = np.minimum(1000.0 / np.maximum(stage, 1e-6),
                     np.where(off > 0, params.pipeline_depth * 1000.0 / np.maximum(latency, 1e-6),
                              np.inf))
    if relief:   # the device's spare time runs whole frames
        spare = np.maximum(1.0 - fps * device * 1e-3, 0.0) * off
        fps = fps + spare * (1000.0 / g.device_ms[g.full])
    return latency, np.minimum(fps, params.camera_fps), cloud * off


def _choose(policy: str, latency: np.ndarray, fps: np.ndarray, cloud: np.ndarray, g: _Group,
            params: FleetParams) -> np.ndarray:
    ok = np.broadcast_to(g.allowed & (g.drop_pp <= params.max_drop_pp + 1e-9), latency.shape).copy()
    ok[:, g.full] |= g.allowed[g.full]
    if policy == "neurosurgeon":
        return np.argmin(np.where(ok, latency, np.inf), axis=1)
    meets = ok & (latency <= params.slo_ms)
    fallback = ~meets.any(axis=1)
    meets[fallback] = ok[fallback]          # nothing meets the latency SLO: best effort
    score = np.where(meets, fps - 1e-6 * latency, -np.inf)
    if policy == "dyno-onload":             # keep dyno's throughput, spend the least cloud
        best = score.max(axis=1, keepdims=True)
        keep = meets & (fps >= np.minimum(best, params.camera_fps) * (1 - 1e-3) - 1e-9)
        return np.argmin(np.where(keep, cloud + 1e-6 * latency, np.inf), axis=1)
    return np.argmax(score, axis=1)


def simulate_fleet(bundle: Bundle, traces: list[Trace], rtts_ms: list[float], policy: str,
                   params: FleetParams) -> dict:
    """Run the fleet; `traces[i]` has round trip `rtts_ms[i]`. Returns the metrics (docstring)."""
    if policy not in POLICIES:
        raise ValueError(f"unknown fleet policy {policy!r}: expected one of {list(POLICIES)}")
    if params.devices < 1 or params.replicas < 1 or not params.tick_s > 0:
        raise ValueError("devices and replicas must be >= 1 and tick_s > 0")
    rng = np.random.default_rng(params.seed)
    classes = assign_classes(params)
    cloud_class = devices.cloud_class(params.cloud)
    groups = [_group(name, np.flatnonzero(np.array(classes) == name), bundle, cloud_class, policy)
              for name, _ in params.mix if name in classes]
    bw_true, which = _rates(traces, params, rng)
    rtt = np.array([params.rtt_ms if params.rtt_ms is not None else rtts_ms[w] for w in which])
    ticks = bw_true.shape[1]
    alpha = min(1.0, params.tick_s / max(params.estimate_lag_s, 1e-9))
    bw_est = bw_true[:, 0].copy()
    current = [np.full(len(g.members), -1) for g in groups]
    relief = policy in ("dyno", "dyno-onload")
    capacity_ms = params.replicas * params.tick_s * 1000.0
    gamma = BATCH_COST.get(params.cloud, 0.0)
    backlog_ms, rho_seen, queue_seen = 0.0, 0.0, 0.0
    frames, skipped = np.zeros(params.devices), np.zeros(params.devices)
    lat_sum, cloud_sum, bytes_sum, drop_sum = (np.zeros(params.devices) for _ in range(4))
    lat_samples, lat_weights = [], []
    in_slo = 0.0
    load_trace = []
    for t in range(ticks):
        seen_scale = 1.0 / (1.0 - min(rho_seen, MAX_LOAD))
        picks, outcomes = [], []
        for gi, g in enumerate(groups):
            m = g.members
            lat_e, fps_e, cloud_e = _predict(g, bw_est[m], rtt[m], queue_seen, seen_scale, params,
                                             relief)
            best = _choose(policy, lat_e, fps_e, cloud_e, g, params)
            cur = current[gi]
            rows = np.arange(len(m))
            if policy != "device" and policy != "cloud":
                held = cur >= 0
                # keep the current configuration unless the new one is better by the margin
                gain = fps_e[rows, best] / np.maximum(fps_e[rows, np.maximum(cur, 0)], 1e-9) - 1
                cheaper = cloud_e[rows, best] < cloud_e[rows, np.maximum(cur, 0)] * (1 - params.margin)
                better = (gain > params.margin) | (policy == "dyno-onload") & cheaper & (gain > -1e-3)
                slo_broken = lat_e[rows, np.maximum(cur, 0)] > params.slo_ms
                best = np.where(held & ~better & ~slo_broken, cur, best)
            current[gi] = best
            picks.append(best)
        # the truth this tick: demand on the cloud first, then what each device gets
        demand = 0.0
        for gi, g in enumerate(groups):
            m, c = g.members, picks[gi]
            lat_t, fps_t, cloud_t = _predict(g, bw_true[m, t], rtt[m], queue_seen, 1.0, params,
                                             relief)
            rows = np.arange(len(m))
            outcomes.append((lat_t[rows, c], fps_t[rows, c], cloud_t[rows, c]))
            demand += float(np.sum(fps_t[rows, c] * g.tail_ms[c] * g.offload[c])) * params.tick_s
        offloaded_frames = sum(float(np.sum(o[1] * (o[2] > 0))) for o in outcomes) * params.tick_s
        mean_tail = demand / max(offloaded_frames, 1e-9)
        rho = served_utilisation(demand / capacity_ms, gamma)
        backlog_ms = max(0.0, backlog_ms + (rho - 1.0) * capacity_ms)
        queue_ms = backlog_ms / params.replicas + (mean_tail * min(rho, MAX_LOAD)
                                                   / (1 - min(rho, MAX_LOAD)))
        for gi, g in enumerate(groups):
            m, c = g.members, picks[gi]
            lat, fps, cloud_ms = outcomes[gi]
            offloaded = cloud_ms > 0
            lat = lat + offloaded * queue_ms
            # frames in flight are bounded: a long cloud queue slows the offloading devices
            fps = np.where(offloaded, np.minimum(fps, params.pipeline_depth * 1000.0
                                                 / np.maximum(lat, 1e-6)), fps)
            n = fps * params.tick_s
            frames[m] += n
            skipped[m] += params.camera_fps * params.tick_s - n   # the camera keeps its latest
            lat_sum[m] += n * lat
            cloud_sum[m] += n * cloud_ms
            bytes_sum[m] += n * g.bits[c] / 8.0
            drop_sum[m] += n * g.drop_pp[c]
            in_slo += float(np.sum(n * (lat <= params.slo_ms)))
            lat_samples.append(lat)
            lat_weights.append(n)
        load_trace.append(min(rho, 10.0))
        rho_seen, queue_seen = rho, queue_ms
        bw_est += alpha * (bw_true[:, t] - bw_est)
    total = float(frames.sum())
    offered = params.camera_fps * params.duration_s * params.devices
    lat_all, w_all = np.concatenate(lat_samples), np.concatenate(lat_weights)
    return {
        "policy": policy, "devices": params.devices, "duration_s": params.duration_s,
        "fleet_fps": total / params.duration_s,
        "per_device_fps_mean": total / params.duration_s / params.devices,
        "slo_attainment": min(1.0, in_slo / total) if total else 0.0,
        "p95_ms": _weighted_quantile(lat_all, w_all, 0.95),
        "cloud_ms_per_frame": float(cloud_sum.sum()) / total if total else 0.0,
        "bytes_per_frame": float(bytes_sum.sum()) / total if total else 0.0,
        "drop_pp": float(drop_sum.sum()) / total if total else 0.0,
        "cloud_utilisation_mean": float(np.mean(load_trace)),
        "cloud_utilisation_max": float(np.max(load_trace)),
        "frames_offered": offered, "frames_processed": total,
        "frames_skipped": float(skipped.sum()), "min_device_skipped": float(skipped.min()),
        "replicas": params.replicas,
        "classes": {g.name: int(len(g.members)) for g in groups},
    }


def _weighted_quantile(x: np.ndarray, w: np.ndarray, q: float) -> float:
    if x.size == 0 or w.sum() <= 0:
        return 0.0
    order = np.argsort(x)
    cum = np.cumsum(w[order])
    return float(x[order][np.searchsorted(cum, q * cum[-1])])


def fleet_traces(spec: str, duration_s: float, seed: int) -> tuple[list[Trace], list[float], str]:
    """A link class name (its trace and RTT), or a trace file (RTT from --rtt-ms)."""
    if spec in LINKS:
        lk = link_class(spec)
        trace, origin = link_trace(lk, duration_s=max(600.0, duration_s), seed=seed)
        return [trace], [lk.rtt_ms], f"{spec} ({origin})"
    path = Path(spec)
    if not path.is_file():
        raise TraceError(f"--link {spec}: neither a link class ({', '.join(LINKS)}) nor a trace "
                         f"file")
    return [read_trace(path)], [60.0], str(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m scheduler.fleet", description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--devices", type=int, default=100)
    ap.add_argument("--mix", default="rpi4:1", help="class:share,... (shares sum to 1)")
    ap.add_argument("--link", default="lte", help=f"a link class ({', '.join(LINKS)}) or a trace file")
    ap.add_argument("--policy", default="dyno", choices=POLICIES)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--cloud", default="gpu")
    ap.add_argument("--camera-fps", type=float, default=30.0)
    ap.add_argument("--slo-ms", type=float, default=300.0)
    ap.add_argument("--max-drop-pp", type=float, default=1.0)
    ap.add_argument("--rtt-ms", type=float, help="override the link's round trip")
    ap.add_argument("--drop-estimate", default="upper", choices=DROP_ESTIMATES,
                    help="accuracy drops: the profile's upper confidence bound (default) or point")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="end with one JSON line")
    args = ap.parse_args(argv)
    try:
        params = FleetParams(devices=args.devices, mix=parse_mix(args.mix), duration_s=args.seconds,
                             camera_fps=args.camera_fps, slo_ms=args.slo_ms,
                             max_drop_pp=args.max_drop_pp, replicas=args.replicas,
                             rtt_ms=args.rtt_ms, cloud=args.cloud, seed=args.seed)
        devices.cloud_class(args.cloud)
        traces, rtts, origin = fleet_traces(args.link, args.seconds, args.seed)
        bundle = load_bundle(args.bundle, drop_estimate=args.drop_estimate)
        t0 = time.perf_counter()
        res = simulate_fleet(bundle, traces, rtts, args.policy, params)
    except (ValueError, FormatError, TraceError, OSError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    res.update(link=origin, wall_s=round(time.perf_counter() - t0, 2), params=asdict(params))
    print(f"{args.policy}: {args.devices} devices ({args.mix}) on {origin}, {args.replicas} "
          f"replica(s): fleet {res['fleet_fps']:.0f} frames/s, SLO attainment "
          f"{100 * res['slo_attainment']:.1f}%, p95 {res['p95_ms']:.0f} ms, cloud "
          f"{res['cloud_ms_per_frame']:.2f} ms/frame, {res['bytes_per_frame']:.0f} B/frame, drop "
          f"{res['drop_pp']:.2f} pp ({res['wall_s']} s)")
    if args.json:
        print(json.dumps(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
