"""The DynO cost claim on a simulated fleet: as devices are added, when does cloud-only saturate
the cloud, and what do dyno and dyno-onload need from it then?

    python -m benchmarks.fleet [--bundle build/fashion] [--devices 1000] [--json PATH]
    python -m benchmarks.fleet --live 8 --seconds 30 [--json PATH]   (real processes: fleet_live.py)

Sweeps the fleet size (doubling up to --devices) with every fleet policy on the same devices,
links and cloud (scheduler/fleet.py), and reports, at the smallest size where cloud-only
saturates the cloud (its SLO attainment falls below 95%), dyno-onload against cloud-only.
Goal there: dyno-onload >= cloud-only's fleet frames/s with <= 0.5x its cloud compute per frame,
>= 95% SLO attainment and <= 1 pp drop. Writes JSON and a PNG (fleet frames/s and cloud ms per
frame against the number of devices, a line per policy).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

from benchmarks._common import RESULTS, ROOT, check_bundle
from scheduler.bundle import load_bundle
from scheduler.fleet import POLICIES, FleetParams, fleet_traces, parse_mix, simulate_fleet

SATURATED_BELOW = 0.95


def sizes_up_to(n: int, start: int = 8) -> list[int]:
    out, k = [], start
    while k < n:
        out.append(k)
        k *= 2
    return out + [n]


def saturation_point(points: list[dict]) -> int | None:
    """The smallest fleet where cloud-only's SLO attainment drops below 95%."""
    sizes = sorted({p["devices"] for p in points if p["policy"] == "cloud"
                    and p["slo_attainment"] < SATURATED_BELOW})
    return sizes[0] if sizes else None


def verdict(points: list[dict], n: int) -> dict:
    at = {p["policy"]: p for p in points if p["devices"] == n}
    cloud, onload = at["cloud"], at["dyno-onload"]
    ratio = (onload["cloud_ms_per_frame"] / cloud["cloud_ms_per_frame"]
             if cloud["cloud_ms_per_frame"] > 0 else None)
    return {"devices": n, "onload_fps": onload["fleet_fps"], "cloud_fps": cloud["fleet_fps"],
            "fps_ratio": onload["fleet_fps"] / cloud["fleet_fps"] if cloud["fleet_fps"] else None,
            "cloud_ms_ratio": ratio, "onload_slo_attainment": onload["slo_attainment"],
            "onload_drop_pp": onload["drop_pp"],
            "goal_met": bool(onload["fleet_fps"] >= cloud["fleet_fps"] and ratio is not None
                             and ratio <= 0.5 and onload["slo_attainment"] >= 0.95
                             and onload["drop_pp"] <= 1.0)}


def plot(points: list[dict], out: Path, title: str, saturated: int | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4), layout="constrained")
    styles = {"device": ":", "neurosurgeon": "--"}   # they often coincide: keep both visible
    for policy in POLICIES:
        pts = sorted((p for p in points if p["policy"] == policy), key=lambda p: p["devices"])
        n = [p["devices"] for p in pts]
        kw = {"marker": "o", "label": policy, "ls": styles.get(policy, "-"), "ms": 4}
        axes[0].plot(n, [p["fleet_fps"] for p in pts], **kw)
        axes[1].plot(n, [p["cloud_ms_per_frame"] for p in pts], **kw)
        axes[2].plot(n, [100 * p["slo_attainment"] for p in pts], **kw)
    for ax, label in zip(axes, ("fleet frames/s", "cloud compute ms per frame",
                                "SLO attainment %")):
        ax.set_xscale("log")
        ax.set_xlabel("devices")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        if saturated:
            ax.axvline(saturated, color="grey", ls="--", lw=1)
    axes[0].set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle(title + (f" (dashed: cloud-only saturates at {saturated})" if saturated else ""),
                 fontsize=10)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.fleet", description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "build" / "fashion")
    ap.add_argument("--devices", type=int, default=1000, help="the largest fleet of the sweep")
    ap.add_argument("--mix", default="rpi4:0.5,phone-low:0.3,pi-zero2:0.2")
    ap.add_argument("--link", default="lte")
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--camera-fps", type=float, default=30.0)
    ap.add_argument("--slo-ms", type=float, default=300.0)
    ap.add_argument("--live", type=int, metavar="N",
                    help="run N real edge processes against one real cloud instead of the sweep")
    ap.add_argument("--json", type=Path, default=RESULTS / "fleet.json")
    args = ap.parse_args(argv)
    if args.live:
        return live_main(args)
    problem = check_bundle(args.bundle, need_device=True)
    try:
        if problem:
            raise ValueError(problem.splitlines()[0])
        base = FleetParams(mix=parse_mix(args.mix), duration_s=args.seconds,
                           replicas=args.replicas, camera_fps=args.camera_fps, slo_ms=args.slo_ms)
        traces, rtts, origin = fleet_traces(args.link, args.seconds, 0)
        bundle = load_bundle(args.bundle)
    except (ValueError, OSError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    points, t0 = [], time.perf_counter()
    from tqdm import tqdm

    jobs = [(n, p) for n in sizes_up_to(args.devices) for p in POLICIES]
    for n, policy in tqdm(jobs, desc="fleet sweep", unit="run", dynamic_ncols=True, file=sys.stderr):
        r = simulate_fleet(bundle, traces, rtts, policy, replace(base, devices=n))
        points.append({"devices": n, "policy": policy, **{k: r[k] for k in (
            "fleet_fps", "cloud_ms_per_frame", "slo_attainment", "drop_pp", "p95_ms",
            "bytes_per_frame", "cloud_utilisation_mean")}})
    wall = time.perf_counter() - t0
    print(f"\nfleet sweep: {args.mix} on {origin}, {args.replicas} replica(s) of the GPU class, "
          f"camera {args.camera_fps:g} fps, SLO {args.slo_ms:g} ms, {args.seconds:g} s ({wall:.0f} s)")
    print(f"{'devices':>7s} {'policy':12s} {'fleet fps':>10s} {'cloud ms/fr':>11s} {'SLO %':>6s} "
          f"{'p95 ms':>8s} {'drop pp':>7s} {'cloud util':>10s}")
    for p in points:
        print(f"{p['devices']:7d} {p['policy']:12s} {p['fleet_fps']:10.0f} "
              f"{p['cloud_ms_per_frame']:11.3f} {100 * p['slo_attainment']:6.1f} {p['p95_ms']:8.0f} "
              f"{p['drop_pp']:7.2f} {p['cloud_utilisation_mean']:10.2f}")
    saturated = saturation_point(points)
    result = {"bundle": str(args.bundle), "link": origin, "params": asdict(base),
              "points": points, "saturated_at": saturated, "wall_s": round(wall, 1)}
    if saturated is None:
        print(f"cloud-only never saturated the cloud up to {args.devices} devices: raise --devices")
    else:
        v = verdict(points, saturated)
        result["verdict"] = v
        print(f"cloud-only saturates at {saturated} devices: dyno-onload {v['onload_fps']:.0f} vs "
              f"{v['cloud_fps']:.0f} frames/s ({v['fps_ratio']:.2f}x), cloud ms per frame "
              f"{v['cloud_ms_ratio']:.3f}x of cloud-only's, SLO {100 * v['onload_slo_attainment']:.1f}%, "
              f"drop {v['onload_drop_pp']:.2f} pp: goal {'met' if v['goal_met'] else 'NOT met'}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=1))
    png = args.json.with_suffix(".png")
    plot(points, png, f"fleet {args.mix} on {args.link}, {args.replicas} replica(s)", saturated)
    print(f"wrote {args.json} and {png}")
    return 0


def live_main(args) -> int:
    from benchmarks.fleet_live import print_live, run_live

    problem = check_bundle(args.bundle, need_device=True)
    try:
        if problem:
            raise ValueError(problem.splitlines()[0])
        if args.live < 1:
            raise ValueError(f"--live must be >= 1, got {args.live}")
        result = run_live(args.bundle, args.live, args.seconds, parse_mix(args.mix), args.link)
    except (ValueError, RuntimeError, OSError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    print_live(result)
    out = args.json if args.json != RESULTS / "fleet.json" else RESULTS / "fleet_live.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
