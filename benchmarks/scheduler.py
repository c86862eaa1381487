"""Every policy on every uplink trace and device class: throughput at <= 1 pp accuracy drop.

    python -m benchmarks.scheduler [--bundle build/fashion] [--duration-s 200] [--devices ...]

Traces: every Mahimahi file under ../shared/traces/ (relative to the repository) plus a
synthetic step (20 -> 1 Mbit/s) and an outage (8 Mbit/s, nothing for 20 s, then back). For each
(trace, device class) cell, all policies run with objective max throughput and SLO accuracy drop
<= 1 pp, and the onloading check runs dyno with objective min cloud compute under a throughput
SLO equal to the cloud baseline's throughput. Prints one table, writes
benchmarks/results/scheduler.json and plots one trace's timeline to
benchmarks/results/scheduler_timeline.png.

Goals per cell: dyno >= 95% of the best baseline (device, cloud, neurosurgeon, fixed8) and >= 90%
of the oracle.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict
from pathlib import Path


from scheduler import devices
from scheduler.bundle import load_bundle
from scheduler.core import Objective, Slo
from scheduler.simulate import Policy, SimParams, simulate
from scheduler.traces import Trace, outage, read_mahimahi, step

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
SHARED_TRACES = ROOT.parent / "shared" / "traces"
FIXTURE_BUNDLE = ROOT / "tests" / "fixtures" / "scheduler"
MAX_DROP_PP = 1.0
BASELINES = (Policy.DEVICE, Policy.CLOUD, Policy.NEUROSURGEON, Policy.FIXED8)


def traces(duration_s: float) -> list[Trace]:
    real = [read_mahimahi(p) for p in sorted(SHARED_TRACES.rglob("*.up"))]
    if not real:
        print(f"warning: no Mahimahi traces under {SHARED_TRACES}; synthetic traces only",
              file=sys.stderr)
    d = float(round(max(duration_s, 60.0)))
    return real + [step(20.0, 1.0, round(d / 2), d), outage(8.0, round(d / 3), round(d / 3) + 20, d)]


def resolve_bundle(path: Path) -> tuple[Path, bool]:
    if (path / "profile.json").is_file():
        return path, False
    bar = "!" * 78
    print(f"{bar}\n! bundle {path} has no profile.json (not built yet?): FALLING BACK TO THE "
          f"TEST FIXTURES\n! {FIXTURE_BUNDLE}\n! These numbers describe a synthetic model, not "
          f"the product's.\n{bar}", file=sys.stderr)
    return FIXTURE_BUNDLE, True


def ratio(a: float, b: float) -> float | None:
    return a / b if b > 0 else None


def run_cell(table, trace: Trace, params: SimParams) -> dict:
    obj, slo = Objective.single("throughput"), Slo(max_drop_pp=MAX_DROP_PP)
    res = {p.value: simulate(table, trace, p, obj, slo, params, keep_timeline=False).summary
           for p in Policy}
    ok = {k: v for k, v in res.items() if v["accuracy_drop_pp"] <= MAX_DROP_PP + 1e-9}
    thr = lambda p: ok[p]["throughput_fps"] if p in ok else 0.0  # noqa: E731
    best_name = max((p.value for p in BASELINES), key=thr)
    dyno = thr("dyno")
    cloud_thr = res["cloud"]["throughput_fps"]
    onload = simulate(table, trace, Policy.DYNO, Objective.single("cloud"),
                      Slo(max_drop_pp=MAX_DROP_PP, min_throughput_fps=cloud_thr), params,
                      keep_timeline=False).summary
    return {
        "trace": trace.name, "trace_mean_mbps": trace.mean_bps / 1e6, "policies": res,
        "best_baseline": best_name,
        "ratios": {"dyno/device": ratio(dyno, thr("device")),
                   "dyno/neurosurgeon": ratio(dyno, thr("neurosurgeon")),
                   "dyno/best_baseline": ratio(dyno, thr(best_name)),
                   "dyno/oracle": ratio(dyno, thr("oracle"))},
        "onloading": {"cloud_throughput_fps": cloud_thr,
                      "cloud_cloud_ms_per_frame": res["cloud"]["cloud_ms_per_frame"],
                      "dyno_throughput_fps": onload["throughput_fps"],
                      "dyno_cloud_ms_per_frame": onload["cloud_ms_per_frame"],
                      "dyno_accuracy_drop_pp": onload["accuracy_drop_pp"],
                      "cloud_ms_ratio": ratio(onload["cloud_ms_per_frame"],
                                              res["cloud"]["cloud_ms_per_frame"])},
    }


def _per_bin(t, v, bin_s: float, end: float, fn) -> tuple:
    import numpy as np
    t, v = np.asarray(t), np.asarray(v, dtype=float)
    edges = np.arange(0.0, end + bin_s, bin_s)
    idx = np.digitize(t, edges) - 1
    xs, ys = [], []
    for k in range(len(edges) - 1):
        sel = v[idx == k]
        if sel.size:
            xs.append(edges[k] + bin_s / 2)
            ys.append(fn(sel))
    return xs, ys


def plot_timeline(table, trace: Trace, params: SimParams, out: Path, title: str) -> None:
    """Bandwidth (true and estimated), dyno's chosen split and bits, and latency over time."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    obj, slo = Objective.single("throughput"), Slo(max_drop_pp=MAX_DROP_PP)
    dyno = simulate(table, trace, Policy.DYNO, obj, slo, params).timeline
    neuro = simulate(table, trace, Policy.NEUROSURGEON, obj, slo, params).timeline
    by_key = {c.key: c for c in table.configs}
    depth_name = {}
    for c in table.configs:
        depth_name.setdefault(c.depth, "device-only (full)" if c.where.value == "device"
                              else "cloud-only (JPEG)" if c.where.value == "cloud" else c.split)
    end = max(r.t_s for r in dyno)
    fig, ax = plt.subplots(4, 1, figsize=(11, 11), sharex=True,
                           gridspec_kw={"height_ratios": [1.1, 1.4, 1.0, 1.1]})
    rates = trace.rates_mbps(1.0, math.floor(end))
    ax[0].step(np.arange(len(rates)) + 0.5, rates, where="mid", color="0.3",
               label="trace capacity (1 s bins)")
    est = [(r.t_s, r.est_mbps) for r in dyno if r.est_mbps]
    if est:
        x, y = _per_bin(*zip(*est), 0.5, end, np.median)
        ax[0].plot(x, y, color="C0", lw=1.0, label="dyno's estimate (median per 0.5 s)")
    ax[0].set_yscale("log")
    ax[0].set_ylabel("uplink Mbit/s")
    ax[0].legend(loc="lower right", fontsize=8)

    t = np.array([r.t_s for r in dyno])
    chosen = [by_key[r.chosen_key] for r in dyno]
    ax[1].step(t, [c.depth for c in chosen], where="post", color="C0", lw=1.2)
    used = sorted({c.depth for c in chosen} | {0, max(depth_name)})
    ax[1].set_yticks(used, [depth_name[d] for d in used], fontsize=8)
    ax[1].set_ylabel("chosen split")
    ax[1].grid(axis="y", alpha=0.3)

    levels = ["JPEG", 2, 3, 4, 5, 6, 8, 16, 32, "full"]
    pos = {str(v): i for i, v in enumerate(levels)}
    lev = [pos["full"] if c.where.value == "device" else pos["JPEG"] if c.where.value == "cloud"
           else pos[str(c.bits)] for c in chosen]
    ax[2].step(t, lev, where="post", color="C2", lw=1.2, label="chosen bits")
    ax[2].set_yticks(range(len(levels)), [str(v) for v in levels], fontsize=8)
    ax[2].set_ylabel("chosen bits")
    ax2 = ax[2].twinx()
    x, y = _per_bin(t, [r.relief for r in dyno], 1.0, end, np.mean)
    ax2.fill_between(x, 0, y, step="mid", color="C1", alpha=0.25, label="relief share (1 s)")
    ax2.set_ylim(0, 1)
    ax2.set_ylabel("share of frames run\nlocally as relief", fontsize=8)
    ax[2].legend(loc="upper left", fontsize=8)
    ax2.legend(loc="upper right", fontsize=8)

    for rows, name, color in ((dyno, "dyno", "C0"), (neuro, "neurosurgeon", "C3")):
        tt = [r.t_s for r in rows]
        lat = [r.latency_ms for r in rows]
        x, y = _per_bin(tt, lat, 1.0, end, np.mean)
        ax[3].plot(x, y, color=color, lw=1.2, label=f"{name} mean")
        x, y = _per_bin(tt, lat, 1.0, end, lambda v: np.percentile(v, 95))
        ax[3].plot(x, y, color=color, lw=0.8, ls="--", label=f"{name} p95")
    ax[3].set_yscale("log")
    ax[3].set_ylabel("latency ms (1 s bins)")
    ax[3].set_xlabel("trace time (s)")
    ax[3].legend(loc="upper right", fontsize=8, ncol=2)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def fmt(x: float | None, pct: bool = False) -> str:
    if x is None:
        return "   -"
    return f"{100 * x:5.0f}%" if pct else f"{x:6.1f}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=ROOT / "build" / "fashion")
    ap.add_argument("--devices", nargs="+", default=["phone-high", "rpi5", "rpi4"])
    ap.add_argument("--cloud", default=devices.DEFAULT_CLOUD)
    ap.add_argument("--duration-s", type=float, default=200.0,
                    help="trace time simulated per run (from the start of each trace)")
    ap.add_argument("--timeline-trace", default="TMobile-LTE-short",
                    help="trace (name) whose timeline is plotted")
    args = ap.parse_args(argv)
    bundle_dir, fallback = resolve_bundle(args.bundle)
    # The synthetic fixture has no confidence bounds; a real bundle's SLO holds on its bounds.
    bundle = load_bundle(bundle_dir, drop_estimate="point" if fallback else "upper")
    if bundle.device_estimated:
        print("note: no device profile in the bundle; head latencies estimated from FLOPs",
              file=sys.stderr)
    cloud = devices.cloud_class(args.cloud)
    params = SimParams(frames=10 ** 7, duration_s=args.duration_s)
    trs = traces(args.duration_s)
    cells, t0 = [], time.perf_counter()
    for dev_name in args.devices:
        dev = devices.device_class(dev_name)
        table = bundle.table_for(dev, cloud)
        for tr in trs:
            cell = run_cell(table, tr, params)
            cell["device"] = dev_name
            cells.append(cell)
            print(f"  ran {dev_name:6s} {tr.name:28s} ({time.perf_counter() - t0:5.0f} s)",
                  file=sys.stderr)
    head = (f"{'device':6s} {'trace':26s} {'Mbps':>5s} | {'device':>6s} {'cloud':>6s} "
            f"{'neuro':>6s} {'fixed8':>6s} {'dyno':>6s} {'oracle':>6s} | {'/dev':>6s} "
            f"{'/neuro':>6s} {'/best':>6s} {'/orac':>6s} | {'onload cloud ms, fps':>22s} | goals")
    print(f"\nthroughput (frames/s) at accuracy drop <= {MAX_DROP_PP} pp, bundle {bundle_dir}"
          f"{' (TEST FIXTURES)' if fallback else ''}, cloud {cloud.name}, "
          f"{args.duration_s:g} s per trace")
    print(head)
    print("-" * len(head))
    all_ok = True
    for c in cells:
        p, r, o = c["policies"], c["ratios"], c["onloading"]
        f = lambda k: p[k]["throughput_fps"] if p[k]["accuracy_drop_pp"] <= MAX_DROP_PP else None  # noqa: E731,E501
        ok = (r["dyno/best_baseline"] or 0) >= 0.95 and (r["dyno/oracle"] or 0) >= 0.90
        c["goals_met"] = ok
        all_ok &= ok
        print(f"{c['device']:6s} {c['trace'][:26]:26s} {c['trace_mean_mbps']:5.2f} | "
              f"{fmt(f('device'))} {fmt(f('cloud'))} {fmt(f('neurosurgeon'))} "
              f"{fmt(f('fixed8'))} {fmt(f('dyno'))} {fmt(f('oracle'))} | "
              f"{fmt(r['dyno/device'], True)} {fmt(r['dyno/neurosurgeon'], True)} "
              f"{fmt(r['dyno/best_baseline'], True)} {fmt(r['dyno/oracle'], True)} | "
              f"{o['dyno_cloud_ms_per_frame']:5.2f} vs {o['cloud_cloud_ms_per_frame']:5.2f} "
              f"{fmt(ratio(o['dyno_throughput_fps'], o['cloud_throughput_fps']), True)} | "
              f"{'ok' if ok else 'MISSED'}")
    print("onload: dyno minimising cloud compute under a throughput SLO = the cloud baseline's "
          "throughput: its cloud ms/frame vs the cloud baseline's, and its throughput as a share "
          "of the cloud baseline's")
    print(f"goals (dyno >= 95% of best baseline and >= 90% of oracle in every cell): "
          f"{'met' if all_ok else 'NOT met'}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "scheduler.json"
    out.write_text(json.dumps({
        "bundle": str(bundle_dir), "fixture_fallback": fallback, "cloud": asdict(cloud),
        "devices": {d: asdict(devices.device_class(d)) for d in args.devices},
        "sim_params": asdict(params), "max_drop_pp": MAX_DROP_PP, "goals_met": all_ok,
        "cells": cells}, indent=1))
    print(f"wrote {out}")
    pick = next((t for t in trs if t.name == args.timeline_trace), trs[0])
    dev = devices.device_class(args.devices[-1])
    png = RESULTS / "scheduler_timeline.png"
    plot_timeline(bundle.table_for(dev, cloud), pick,
                  SimParams(frames=10 ** 7, duration_s=min(args.duration_s, pick.duration_s)),
                  png, f"dyno on {pick.name}, {dev.name}, objective max throughput, drop <= "
                       f"{MAX_DROP_PP} pp{' (TEST FIXTURES)' if fallback else ''}")
    print(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
