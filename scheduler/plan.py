"""python -m scheduler.plan: should we deploy this, and how many servers do we need?

    python -m scheduler.plan --bundle build/fashion --uplink lte --devices rpi4:0.5,phone-low:0.5 \\
        --fleet 200 --max-drop-pp 1 --slo-ms 300 [--cloud gpu] [--json]

Three answers from the deployer (their network, their device mix, the accuracy they can give
up) become a fleet simulation (scheduler/fleet.py) per policy. For each policy: the fewest cloud
replicas with which at least 95% of frames meet the latency SLO, and at that size the fleet's
frames/s, p95 latency, SLO attainment, cloud compute per frame and uplink bytes per device per
day. The recommendation is the policy with the most frames/s among those that hold the SLO and
the accuracy budget; ties go to fewer replicas, then less cloud compute.

--uplink is a link class (see scheduler/links.py), a trace file, or a constant rate in Mbit/s.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import replace
from pathlib import Path

from scheduler import devices
from scheduler.bundle import load_bundle
from scheduler.fleet import POLICIES, FleetParams, fleet_traces, parse_mix, simulate_fleet
from scheduler.links import LINKS
from scheduler.traces import Trace, TraceError, constant
from splitinfer.bundle.profile import DROP_ESTIMATES
from splitinfer.errors import FormatError

SLO_TARGET = 0.95      # share of frames within the latency SLO that counts as holding it
MAX_REPLICAS = 1024
SECONDS_PER_DAY = 86400.0


def uplink_traces(spec: str, seconds: float) -> tuple[list[Trace], list[float], str]:
    """A link class, a trace file or a number (Mbit/s, with a 60 ms round trip)."""
    try:
        mbps = float(spec)
    except ValueError:
        return fleet_traces(spec, seconds, 0)
    if not mbps > 0:
        raise ValueError(f"--uplink {spec}: a constant rate must be > 0 Mbit/s")
    return [constant(mbps, max(seconds, 60.0))], [60.0], f"constant {mbps:g} Mbit/s"


def replicas_needed(run, params: FleetParams) -> tuple[int | None, dict]:
    """The fewest replicas that hold the SLO (None: not even MAX_REPLICAS), and that run."""
    lo_run = run(replace(params, replicas=1))
    if lo_run["slo_attainment"] >= SLO_TARGET:
        return (0 if lo_run["cloud_ms_per_frame"] == 0 else 1), lo_run
    hi = 2
    while hi <= MAX_REPLICAS:
        hi_run = run(replace(params, replicas=hi))
        if hi_run["slo_attainment"] >= SLO_TARGET:
            break
        hi *= 2
    else:
        return None, run(replace(params, replicas=MAX_REPLICAS))
    lo = hi // 2                       # fails at lo, holds at hi: bisect
    while hi - lo > 1:
        mid = (lo + hi) // 2
        mid_run = run(replace(params, replicas=mid))
        if mid_run["slo_attainment"] >= SLO_TARGET:
            hi, hi_run = mid, mid_run
        else:
            lo = mid
    return hi, hi_run


def plan(bundle, traces, rtts, params: FleetParams) -> dict:
    out = {}
    for policy in POLICIES:
        needed, r = replicas_needed(lambda p, policy=policy: simulate_fleet(bundle, traces, rtts,
                                                                            policy, p), params)
        out[policy] = {
            "fleet_fps": r["fleet_fps"], "p95_ms": r["p95_ms"],
            "slo_attainment": r["slo_attainment"], "cloud_ms_per_frame": r["cloud_ms_per_frame"],
            "bytes_per_device_day": r["bytes_per_frame"] * r["per_device_fps_mean"] * SECONDS_PER_DAY,
            "drop_pp": r["drop_pp"], "replicas_needed": needed}
    return out


def recommend(policies: dict, max_drop_pp: float) -> str | None:
    ok = [(name, p) for name, p in policies.items()
          if p["replicas_needed"] is not None and p["drop_pp"] <= max_drop_pp + 1e-9]
    if not ok:
        return None
    return max(ok, key=lambda kv: (round(kv[1]["fleet_fps"], 6), -kv[1]["replicas_needed"],
                                   -kv[1]["cloud_ms_per_frame"]))[0]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m scheduler.plan", description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, required=True)
    ap.add_argument("--uplink", required=True,
                    help=f"a link class ({', '.join(LINKS)}), a trace file, or Mbit/s")
    ap.add_argument("--devices", required=True, help="the device mix, class:share,...")
    ap.add_argument("--fleet", type=int, required=True, help="how many devices")
    ap.add_argument("--max-drop-pp", type=float, default=1.0)
    ap.add_argument("--slo-ms", type=float, default=300.0)
    ap.add_argument("--cloud", default="gpu")
    ap.add_argument("--camera-fps", type=float, default=30.0)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--drop-estimate", default="upper", choices=DROP_ESTIMATES)
    ap.add_argument("--json", action="store_true", help="end with one JSON line")
    args = ap.parse_args(argv)
    try:
        if args.fleet < 1:
            raise ValueError(f"--fleet must be >= 1, got {args.fleet}")
        devices.cloud_class(args.cloud)
        params = FleetParams(devices=args.fleet, mix=parse_mix(args.devices),
                             duration_s=args.seconds, camera_fps=args.camera_fps,
                             slo_ms=args.slo_ms, max_drop_pp=args.max_drop_pp, cloud=args.cloud)
        traces, rtts, origin = uplink_traces(args.uplink, args.seconds)
        bundle = load_bundle(args.bundle, drop_estimate=args.drop_estimate)
        policies = plan(bundle, traces, rtts, params)
    except (ValueError, FormatError, TraceError, OSError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    best = recommend(policies, args.max_drop_pp)
    print(f"{args.fleet} devices ({args.devices}) on {origin}, {args.cloud} cloud, latency SLO "
          f"{args.slo_ms:g} ms for {100 * SLO_TARGET:g}% of frames, accuracy drop <= "
          f"{args.max_drop_pp:g} pp, cameras at {args.camera_fps:g} fps")
    print(f"{'policy':12s} {'replicas':>8s} {'fleet fps':>10s} {'p95 ms':>8s} {'SLO %':>6s} "
          f"{'cloud ms/fr':>11s} {'MB/device/day':>13s} {'drop pp':>7s}")
    for name, p in policies.items():
        reps = "-" if p["replicas_needed"] is None else str(p["replicas_needed"])
        print(f"{name:12s} {reps:>8s} {p['fleet_fps']:10.0f} {p['p95_ms']:8.0f} "
              f"{100 * p['slo_attainment']:6.1f} {p['cloud_ms_per_frame']:11.3f} "
              f"{p['bytes_per_device_day'] / 1e6:13.1f} {p['drop_pp']:7.2f}")
    if best is None:
        print("recommendation: none of the policies holds the SLO and the accuracy budget; relax "
              "the SLO or the budget, or use faster devices")
    else:
        b = policies[best]
        print(f"recommendation: {best}: {b['fleet_fps']:.0f} frames/s with "
              f"{b['replicas_needed']} cloud replica(s), {b['bytes_per_device_day'] / 1e6:.1f} MB "
              f"uplink per device per day")
    if args.json:
        print(json.dumps({"policies": policies, "recommended": best}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
