"""How long one Scheduler.decide() takes for 100, 200 and 400 configurations.

    python -m benchmarks.scheduler_decision [--repeats N]

Configurations are synthetic (k splits x 8 bit widths + device-only + cloud-only, cut to the
exact count), shaped like the fixture bundle. Between decisions the scheduler receives uploads,
RTTs and server answers as in a run, so every decide() recomputes from fresh estimates. Prints a
table and writes benchmarks/results/scheduler_decision.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path


from scheduler.core import Config, ConfigTable, Objective, Slo, Where
from scheduler.scheduler import Scheduler

RESULTS = Path(__file__).resolve().parent / "results"
BITS = (2, 3, 4, 5, 6, 8, 16, 32)


def synthetic_table(n: int) -> ConfigTable:
    """n configurations: device-only, JPEG, then (split, bits) with shrinking activations."""
    configs = [Config("full", None, Where.DEVICE, 40.0, 0.0, 0.0, 0.0, 0.0, 0.0, 99),
               Config("input", None, Where.CLOUD, 0.0, 4.0, 5200.0, 0.3, 0.5, 0.35, 0)]
    k = 0
    while len(configs) < n:
        frac = (k + 1) / (n / len(BITS) + 2)
        elems = 100_000 * (1 - frac) ** 2 + 1000
        for b in BITS:
            if len(configs) >= n:
                break
            configs.append(Config(f"s{k}", b, Where.SPLIT, 40.0 * frac, 0.05 + elems * 4e-6,
                                  elems * b / 8 * 0.7, 0.02, 0.5 + 10 * (1 - frac),
                                  {2: 10, 3: 4, 4: 1.5, 5: 0.6, 6: 0.25, 8: 0.06}.get(b, 0.0),
                                  k + 1))
        k += 1
    return ConfigTable.build(configs)


def measure(n: int, objective: str, slo: Slo, repeats: int) -> dict:
    s = Scheduler(synthetic_table(n), Objective.parse(objective), slo)
    t = 0.0
    for i in range(20):
        s.observe_upload(t, 20_000, 0.05 + 0.01 * (i % 3))
        t += 0.05
    times = []
    for i in range(repeats):
        if i % 3 == 0:   # the observations a run delivers between frames
            s.observe_upload(t, 8_000 + 100 * (i % 7), 0.03 + 0.002 * (i % 5))
            s.observe_rtt(t, 60.0 + (i % 4))
            s.observe_cloud("s3", 0.6, 0.1)
        t0 = time.perf_counter_ns()
        s.decide(t)
        times.append((time.perf_counter_ns() - t0) / 1e3)
        t += 0.02
    times.sort()
    return {"configs": n, "objective": objective, "slo": {k: v for k, v in slo.__dict__.items()
                                                         if v is not None},
            "median_us": statistics.median(times), "p90_us": times[int(0.9 * len(times))],
            "p99_us": times[int(0.99 * len(times))], "mean_us": statistics.fmean(times),
            "repeats": repeats}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5000)
    args = ap.parse_args(argv)
    cases = [("throughput", Slo(max_drop_pp=1.0)),
             ("latency", Slo(max_latency_ms=150.0, max_drop_pp=1.0)),
             ("cloud", Slo(min_throughput_fps=30.0, max_drop_pp=1.0)),
             ("latency=0.5,bytes=0.5", Slo(max_drop_pp=1.0))]
    rows = [measure(n, obj, slo, args.repeats) for n in (100, 200, 400) for obj, slo in cases]
    print(f"{'configs':>7}  {'objective':24s} {'median':>8} {'p90':>8} {'p99':>8}  (us per decide)")
    for r in rows:
        print(f"{r['configs']:7d}  {r['objective']:24s} {r['median_us']:8.1f} {r['p90_us']:8.1f} "
              f"{r['p99_us']:8.1f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "scheduler_decision.json"
    out.write_text(json.dumps({"python": sys.version.split()[0], "machine": platform.machine(),
                               "processor": platform.processor(), "rows": rows}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
