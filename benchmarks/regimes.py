"""The regime map: where dynamic splitting pays, over models x device classes x link classes.

    python -m benchmarks.regimes [--bundle build/fashion ...] [--json PATH] [--duration-s 60]

Every cell simulates each policy on the link class's trace with the GPU cloud class and the
throughput objective, at accuracy drop <= 1 pp (upper confidence bound):
  device            the full model on the board
  cloud             JPEG upload, the full model in the cloud
  neurosurgeon      the latency-optimal split online, float32 activations, JPEG for cloud-only
  neurosurgeon-raw  as published: float32 activations and the raw float32 input for cloud-only
  fixed8            one 8-bit split chosen offline for the link's mean bandwidth
  dyno              (split, bits) online
  oracle            per frame, the best configuration knowing the true transfer times
A policy whose frames drop more than 1 pp on average is scored 0 frames/s. Frames/s are frames
answered within the simulated window per second of it (steady state: a frame stuck in a stalled
upload when the window closes costs latency, not throughput).

In-flight limit: every policy in a cell gets the same one, 6 frames by default (the edge
runtime's). `--depth bdp` sizes it to the link's bandwidth-delay product in the smallest payload
within the accuracy SLO, between 6 and 64 frames (`depth_for`): that lifts cloud-only on fast
links more than dyno (2026-12-07: goals met in 102 of 108 cells against 108 at 6), so it is a
what-if, not the default.

Writes JSON (`--json`, default benchmarks/results/regimes.json) and a heat map PNG next to it:
dyno/best baseline, dyno/device and dyno/neurosurgeon-raw per (device, link), one row of panels
per model. Goals, every cell: dyno >= 0.95x the best baseline, >= 0.90x the oracle, drop <= 1 pp.
Headlines, best cell: dyno/device >= 10x, dyno/neurosurgeon-raw >= 8x.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

from benchmarks._common import RESULTS, ROOT, check_bundle
from scheduler import devices
from scheduler.bundle import Bundle, load_bundle
from scheduler.core import Objective, Slo, Where
from scheduler.links import LINKS, link_class, link_trace, traces_dir
from scheduler.sim_policies import raw_input_table
from scheduler.simulate import Policy, SimParams, simulate

MAX_DROP_PP = 1.0
POLICIES = ("device", "cloud", "neurosurgeon", "neurosurgeon-raw", "fixed8", "dyno", "oracle")
BASELINES = ("device", "cloud", "neurosurgeon", "neurosurgeon-raw", "fixed8")
GOAL_BEST, GOAL_ORACLE = 0.95, 0.90
HEADLINE_DEVICE, HEADLINE_RAW = 10.0, 8.0
MIN_DEPTH, MAX_DEPTH = 6, 64


def depth_for(table, mean_bps: float, rtt_ms: float, max_drop_pp: float) -> int:
    """Frames in flight that fill the link: bandwidth x RTT over the smallest payload allowed."""
    payloads = [c.bytes for c in table.configs
                if c.where is not Where.DEVICE and c.drop_pp <= max_drop_pp and c.bytes > 0]
    if not payloads:
        return MIN_DEPTH
    bdp_frames = mean_bps / 8.0 * rtt_ms / 1e3 / min(payloads)
    return int(min(MAX_DEPTH, max(MIN_DEPTH, math.ceil(bdp_frames))))


_BUNDLES: dict[str, Bundle] = {}


def _bundle(path: str) -> Bundle:
    if path not in _BUNDLES:
        _BUNDLES[path] = load_bundle(Path(path))
    return _BUNDLES[path]


def run_cell(bundle_path: str, model: str, device: str, link: str, duration_s: float,
             seed: int, depth_rule: str = "bdp") -> dict:
    """Every policy on one (model, device, link) cell."""
    b = _bundle(bundle_path)
    dev, lk = devices.device_class(device), link_class(link)
    table = b.table_for(dev, devices.cloud_class("gpu"))
    raw = raw_input_table(table, math.prod(b.manifest.input_shape))
    trace, origin = link_trace(lk, duration_s=max(600.0, duration_s), seed=seed)
    depth = (depth_for(table, trace.mean_bps, lk.rtt_ms, MAX_DROP_PP) if depth_rule == "bdp"
             else int(depth_rule))
    params = SimParams(frames=10 ** 7, duration_s=duration_s, rtt_ms=lk.rtt_ms,
                       pipeline_depth=depth, seed=seed)
    obj, slo = Objective.single("throughput"), Slo(max_drop_pp=MAX_DROP_PP)
    fps, drop = {}, {}
    for name in POLICIES:
        t, p = (raw, Policy.NEUROSURGEON) if name == "neurosurgeon-raw" else (table, Policy(name))
        s = simulate(t, trace, p, obj, slo, params, keep_timeline=False).summary
        fps[name], drop[name] = s["window_fps"], s["accuracy_drop_pp"]
    return {"model": model, "device": device, "link": link, "trace": origin,
            "pipeline_depth": depth, "fps": fps, "drop_pp": drop, **ratios(fps, drop)}


def ratios(fps: dict[str, float], drop: dict[str, float]) -> dict:
    """Throughput ratios, scoring a policy that breaks the accuracy SLO at 0 frames/s."""
    ok = {k: (v if drop[k] <= MAX_DROP_PP + 1e-9 else 0.0) for k, v in fps.items()}
    best = max(BASELINES, key=lambda k: ok[k])
    r = lambda a, b: (ok[a] / ok[b]) if ok[b] > 0 else None  # noqa: E731
    out = {"best_baseline": best,
           "ratios": {"dyno/best_baseline": r("dyno", best), "dyno/device": r("dyno", "device"),
                      "dyno/cloud": r("dyno", "cloud"),
                      "dyno/neurosurgeon": r("dyno", "neurosurgeon"),
                      "dyno/neurosurgeon-raw": r("dyno", "neurosurgeon-raw"),
                      "dyno/oracle": r("dyno", "oracle")}}
    rr = out["ratios"]
    out["goals_met"] = bool((rr["dyno/best_baseline"] or 0) >= GOAL_BEST
                            and (rr["dyno/oracle"] or 0) >= GOAL_ORACLE
                            and drop["dyno"] <= MAX_DROP_PP + 1e-9)
    return out


def plot(cells: list[dict], models: list[str], devs: list[str], links: list[str], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from matplotlib.colors import LogNorm, TwoSlopeNorm
    from matplotlib.ticker import FuncFormatter

    panels = (("dyno/best_baseline", "dyno / best baseline"), ("dyno/device", "dyno / device-only"),
              ("dyno/neurosurgeon-raw", "dyno / Neurosurgeon (raw input)"))
    fig, axes = plt.subplots(len(models), 3, figsize=(17, 0.55 * len(devs) * len(models) + 2.2),
                             squeeze=False)
    for row, model in enumerate(models):
        for col, (key, title) in enumerate(panels):
            ax = axes[row][col]
            grid = np.full((len(devs), len(links)), np.nan)
            for c in cells:
                if c["model"] == model and c["ratios"][key] is not None:
                    grid[devs.index(c["device"]), links.index(c["link"])] = c["ratios"][key]
            if key == "dyno/best_baseline":
                norm, cmap = TwoSlopeNorm(1.0, vmin=min(0.8, np.nanmin(grid)),
                                          vmax=max(1.5, np.nanmax(grid))), "RdYlGn"
            else:
                hi = max(2.0, np.nanmax(grid))
                norm, cmap = LogNorm(vmin=min(0.5, np.nanmin(grid)), vmax=hi), "viridis"
            im = ax.imshow(grid, cmap=cmap, norm=norm, aspect="auto")
            for i in range(len(devs)):
                for j in range(len(links)):
                    if not np.isnan(grid[i, j]):
                        v = grid[i, j]
                        ax.text(j, i, f"{v:.2f}" if v < 10 else f"{v:.0f}", ha="center",
                                va="center", fontsize=8,
                                color="black" if key == "dyno/best_baseline" or v > 3 else "white")
            ax.set_xticks(range(len(links)), links, rotation=30, ha="right")
            ax.set_yticks(range(len(devs)), devs)
            ax.set_title(f"{model}: {title}", fontsize=10)
            bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
            plain = FuncFormatter(lambda v, _: f"{v:g}")
            bar.ax.yaxis.set_major_formatter(plain)
            bar.ax.yaxis.set_minor_formatter(plain)
    fig.suptitle(f"Throughput ratios, GPU cloud, objective max throughput, drop <= {MAX_DROP_PP} pp "
                 f"(devices slowest at the top)", fontsize=11)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def trace_note(cells: list[dict]) -> str | None:
    """One line naming the links whose recording was missing, so that synthetic stand-ins are
    never mistaken for the recordings (the map differs between the two)."""
    missing = sorted({c["link"] for c in cells if link_class(c["link"]).recording is not None
                      and not str(c.get("trace", "")).startswith("recording")})
    if not missing:
        return None
    return (f"note: no recording under {traces_dir()} for {', '.join(missing)}: synthetic traces "
            "stand in (set $SPLITINFER_TRACES to the folder of the recordings)")


def print_table(cells: list[dict]) -> None:
    head = (f"{'model':10s} {'device':11s} {'link':8s} {'depth':>5s} | "
            + " ".join(f"{p[:7]:>7s}" for p in POLICIES)
            + " | /best  /dev /n-raw /neuro /orac")
    print(head)
    print("-" * len(head))
    for c in cells:
        r = c["ratios"]
        f = lambda x: f"{x:5.2f}" if x is not None and x < 100 else (f"{x:5.0f}" if x else "    -")  # noqa: E731
        print(f"{c['model'][:10]:10s} {c['device']:11s} {c['link']:8s} {c['pipeline_depth']:5d} | "
              + " ".join(f"{c['fps'][p]:7.1f}" for p in POLICIES)
              + f" | {f(r['dyno/best_baseline'])} {f(r['dyno/device'])} "
                f"{f(r['dyno/neurosurgeon-raw'])} {f(r['dyno/neurosurgeon'])} "
                f"{f(r['dyno/oracle'])}{'' if c['goals_met'] else '  MISSED'}")


def headlines(cells: list[dict]) -> dict:
    def best(key: str) -> dict:
        c = max((c for c in cells if c["ratios"][key] is not None), key=lambda c: c["ratios"][key])
        return {"value": c["ratios"][key], "model": c["model"], "device": c["device"],
                "link": c["link"]}

    def worst(key: str) -> dict:
        c = min(cells, key=lambda c: c["ratios"][key] or 0.0)
        return {"value": c["ratios"][key], "model": c["model"], "device": c["device"],
                "link": c["link"]}

    return {"best_dyno/device": best("dyno/device"),
            "best_dyno/neurosurgeon-raw": best("dyno/neurosurgeon-raw"),
            "best_dyno/neurosurgeon": best("dyno/neurosurgeon"),
            "worst_dyno/best_baseline": worst("dyno/best_baseline"),
            "worst_dyno/oracle": worst("dyno/oracle"),
            "cells": len(cells), "cells_meeting_goals": sum(c["goals_met"] for c in cells)}


def default_bundles() -> list[Path]:
    return [p for p in (ROOT / "build" / "fashion", ROOT / "build" / "fashion-inception")
            if (p / "profile.json").is_file()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.regimes",
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, action="append",
                    help="a profiled bundle (repeat for several models; default: the trained "
                         "models' bundles under build/)")
    ap.add_argument("--devices", nargs="+", default=[d.name for d in devices.emulated()])
    ap.add_argument("--links", nargs="+", default=list(LINKS))
    ap.add_argument("--duration-s", type=float, default=60.0, help="trace time per simulation")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--depth", default="6",
                    help="frames in flight: 'bdp' (the link's bandwidth-delay product) or a number")
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--json", type=Path, default=RESULTS / "regimes.json")
    args = ap.parse_args(argv)
    bundles = args.bundle or default_bundles()
    if not bundles:
        print("error: no profiled bundle under build/: run `make demo` first, or pass --bundle",
              file=sys.stderr)
        return 2
    try:
        for b in bundles:
            problem = check_bundle(b, need_device=True)
            if problem:
                raise ValueError(problem.splitlines()[0])
        for d in args.devices:
            devices.device_class(d)
        for lk in args.links:
            link_class(lk)
        models = [_bundle(str(b)).manifest.model_name for b in bundles]
        for b in bundles:
            _bundle(str(b)).device_factor(devices.device_class(args.devices[0]))
    except (ValueError, OSError) as e:
        print(f"error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    if len(set(models)) < len(models):
        models = [f"{m}@{b.name}" for m, b in zip(models, bundles)]
    jobs = [(str(b), m, d, lk, args.duration_s, args.seed, args.depth)
            for b, m in zip(bundles, models) for d in args.devices for lk in args.links]
    t0 = time.perf_counter()
    from tqdm import tqdm

    with ProcessPoolExecutor(max(1, args.jobs)) as pool:
        futures = [pool.submit(run_cell, *j) for j in jobs]
        cells = [f.result() for f in tqdm(futures, desc="regime cells", unit="cell",
                                          dynamic_ncols=True, file=sys.stderr)]
    wall = time.perf_counter() - t0
    print(f"\nregime map: {len(models)} model(s) x {len(args.devices)} devices x "
          f"{len(args.links)} links, GPU cloud, throughput objective, drop <= {MAX_DROP_PP} pp, "
          f"{args.duration_s:g} s of trace per run ({wall:.0f} s)")
    print_table(cells)
    note = trace_note(cells)
    if note is not None:
        print(note)
    head = headlines(cells)
    print(f"\nheadlines: best dyno/device {head['best_dyno/device']['value']:.1f}x "
          f"({head['best_dyno/device']['device']}, {head['best_dyno/device']['link']}); "
          f"best dyno/neurosurgeon-raw {head['best_dyno/neurosurgeon-raw']['value']:.1f}x "
          f"({head['best_dyno/neurosurgeon-raw']['device']}, "
          f"{head['best_dyno/neurosurgeon-raw']['link']}); best dyno/neurosurgeon "
          f"{head['best_dyno/neurosurgeon']['value']:.2f}x; worst dyno/best baseline "
          f"{head['worst_dyno/best_baseline']['value']:.2f}, worst dyno/oracle "
          f"{head['worst_dyno/oracle']['value']:.2f}; goals met in "
          f"{head['cells_meeting_goals']}/{head['cells']} cells")
    png = args.json.with_suffix(".png")
    plot(cells, models, args.devices, args.links, png)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({
        "bundles": [str(b) for b in bundles], "models": models, "devices": [
            asdict(devices.device_class(d)) for d in args.devices],
        "links": [asdict(link_class(lk)) for lk in args.links], "cloud": "gpu",
        "objective": "throughput", "max_drop_pp": MAX_DROP_PP, "duration_s": args.duration_s,
        "seed": args.seed, "headlines": head, "cells": cells, "wall_s": round(wall, 1)}, indent=1))
    print(f"wrote {args.json} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
