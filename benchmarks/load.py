"""Load: 64 concurrent edge clients against one cloud service, at a sustainable rate and overloaded.

    python -m benchmarks.load [--bundle DIR] [--clients 64] [--seconds 60] [--overload-s 20]
                              [--max-queue 4] [--out benchmarks/results/load.json]

Each client is a thread with its own keep-alive requests.Session posting real packed payloads
(head outputs at one split). Phases, each bounded in time:
  saturation  one default server, every client back to back (closed loop): the capacity;
  sustained   the same server, every client paced so that together they offer `--load-share`
              of that capacity, for `--seconds`: must see zero errors; p50/p99 latency;
  overload    a second server with `--max-queue` (small), every client back to back: the
              excess must be answered 503 with Retry-After, quickly, while accepted requests
              keep a bounded latency and /healthz (polled alongside) keeps answering.
Prints a table and writes benchmarks/results/load.json. tests/test_reliability_load.py runs
the same phases for a few seconds each and asserts on them.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import requests
from requests.adapters import HTTPAdapter

REPO = Path(__file__).resolve().parents[1]

from benchmarks._common import write_results
from benchmarks.cloud_load import make_payloads
from splitinfer.bundle.manifest import load_manifest
from splitinfer.testing import CloudProcess

DEFAULT_OUT = REPO / "benchmarks" / "results" / "load.json"
DEFAULT_BUNDLE = REPO / "build" / "reliability-tiny"


def _session() -> requests.Session:
    s = requests.Session()
    s.mount("http://", HTTPAdapter(max_retries=0, pool_connections=1, pool_maxsize=1))
    return s


def drive(url: str, payloads: list[bytes], clients: int, seconds: float, *,
          rate_per_client: float | None = None, headers: dict | None = None,
          timeout_s: float = 30.0) -> dict:
    """`clients` threads posting for `seconds`, back to back or paced at `rate_per_client`.

    Returns counts by status (and by exception type), whether every 503 had Retry-After, and
    latency percentiles of the 200s and of the 503s.
    """
    per_client: list[list[tuple[float, int | str, bool]]] = [[] for _ in range(clients)]
    barrier = threading.Barrier(clients + 1)
    t_start = [0.0]

    def client(i: int) -> None:
        s = _session()
        out = per_client[i]
        barrier.wait()
        start, k = t_start[0], 0
        offset = (i / clients / rate_per_client) if rate_per_client else 0.0
        deadline = start + seconds
        while True:
            if rate_per_client:
                due = start + offset + k / rate_per_client
                if due >= deadline:
                    break
                if (wait := due - time.perf_counter()) > 0:
                    time.sleep(wait)
            elif time.perf_counter() >= deadline:
                break
            body = payloads[(i + k) % len(payloads)]
            t0 = time.perf_counter()
            try:
                r = s.post(url + "/v1/infer?k=1", data=body, headers=headers, timeout=timeout_s)
                status, retry_after = r.status_code, "Retry-After" in r.headers
            except requests.RequestException as e:
                status, retry_after = type(e).__name__, False
            out.append((time.perf_counter() - t0, status, retry_after))
            k += 1
        s.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True, name=f"client-{i}")
               for i in range(clients)]
    for t in threads:
        t.start()
    t_start[0] = time.perf_counter()
    barrier.wait()
    for t in threads:
        t.join(seconds + timeout_s + 30)
    elapsed = time.perf_counter() - t_start[0]
    flat = [x for rows in per_client for x in rows]
    ok = np.array([1e3 * lat for lat, st, _ in flat if st == 200]) if flat else np.zeros(0)
    busy = [(lat, ra) for lat, st, ra in flat if st == 503]
    statuses = Counter(str(st) for _, st, _ in flat)
    return {
        "clients": clients, "seconds": round(elapsed, 2),
        "offered_rps": round(clients * rate_per_client, 1) if rate_per_client else None,
        "requests": len(flat), "ok": int(ok.size), "rps_ok": round(ok.size / elapsed, 1),
        "statuses": dict(statuses),
        "errors": len(flat) - int(ok.size) - len(busy),  # anything but 200 and 503
        "overloaded_503": len(busy),
        "overloaded_without_retry_after": sum(1 for _, ra in busy if not ra),
        "stuck_clients": sum(t.is_alive() for t in threads),
        **_percentiles("ok", ok),
        **_percentiles("503", np.array([1e3 * lat for lat, _ in busy])),
    }


def _percentiles(name: str, ms: np.ndarray) -> dict:
    if ms.size == 0:
        return {f"{name}_p50_ms": None, f"{name}_p99_ms": None, f"{name}_max_ms": None}
    return {f"{name}_p50_ms": round(float(np.percentile(ms, 50)), 2),
            f"{name}_p99_ms": round(float(np.percentile(ms, 99)), 2),
            f"{name}_max_ms": round(float(ms.max()), 2)}


class WorkerCpu:
    """CPU seconds the server's worker process spends while a phase runs (psutil)."""

    def __init__(self, pid: int):
        import psutil

        self.proc = psutil.Process(pid)
        self.seconds = 0.0

    def __enter__(self) -> "WorkerCpu":
        t = self.proc.cpu_times()
        self._t0 = t.user + t.system
        return self

    def __exit__(self, *exc) -> None:
        t = self.proc.cpu_times()
        self.seconds = t.user + t.system - self._t0


class HealthMonitor:
    """Polls /healthz every `every_s` on its own connection while a phase runs."""

    def __init__(self, url: str, every_s: float = 0.2):
        self.url, self.every_s = url, every_s
        self.samples: list[float] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="healthz")

    def __enter__(self) -> "HealthMonitor":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        s = _session()
        while not self._stop.wait(self.every_s):
            t0 = time.perf_counter()
            try:
                r = s.get(self.url + "/healthz", timeout=5)
                if r.status_code != 200:
                    self.failures.append(str(r.status_code))
            except requests.RequestException as e:
                self.failures.append(type(e).__name__)
                continue
            self.samples.append(1e3 * (time.perf_counter() - t0))

    def report(self) -> dict:
        ms = np.array(self.samples)
        return {"healthz_polls": int(ms.size), "healthz_failures": len(self.failures),
                **_percentiles("healthz", ms)}


def run_phases(normal: CloudProcess, small_queue: CloudProcess, payloads: list[bytes], *,
               clients: int = 64, saturation_s: float = 10.0, sustained_s: float = 60.0,
               overload_s: float = 20.0, load_share: float = 0.5, rate_per_client: float | None = None,
               log=print) -> dict:
    """The three phases; `rate_per_client` fixes the sustained rate instead of `load_share`."""
    out: dict = {}
    for server in (normal, small_queue):  # warm every batch bucket first
        drive(server.url, payloads, clients, 1.5, headers=server.headers)
    pid = {s.url: s.worker_pid() for s in (normal, small_queue)}
    def phase(server, **kw) -> dict:
        with HealthMonitor(server.url) as mon, WorkerCpu(pid[server.url]) as cpu:
            r = drive(server.url, payloads, clients, headers=server.headers, **kw)
        return {**r, **mon.report(), "server_cpu_s": round(cpu.seconds, 2),
                "server_cpu_ms_per_request": round(1e3 * cpu.seconds / max(r["requests"], 1), 3)}

    if rate_per_client is None:
        out["saturation"] = sat = phase(normal, seconds=saturation_s)
        rate_per_client = max(0.1, load_share * sat["rps_ok"] / clients)
        log(f"load: saturation {sat['rps_ok']} req/s; sustained at {clients} x {rate_per_client:.2f}/s")
    out["sustained"] = sus = phase(normal, seconds=sustained_s, rate_per_client=rate_per_client)
    log(f"load: sustained {sus['rps_ok']} req/s, p99 {sus['ok_p99_ms']} ms, {sus['errors']} errors")
    out["overload"] = over = phase(small_queue, seconds=overload_s)
    log(f"load: overload {over['rps_ok']} ok/s, {over['overloaded_503']} x 503, accepted p99 "
        f"{over['ok_p99_ms']} ms")
    out["same_workers_after"] = all(s.alive() and s.worker_pid() == pid[s.url]
                                    for s in (normal, small_queue))
    return out


def start_both(bundle: Path, logs: Path, max_queue: int, token: str | None = None):
    """The default server and the small-queue one, started in parallel."""
    normal = CloudProcess(bundle, logs / "load-default.log", token=token)
    small = CloudProcess(bundle, logs / "load-small-queue.log", ["--max-queue", str(max_queue)],
                         token=token)
    with ThreadPoolExecutor(2) as ex:
        futures = [ex.submit(s.start, 180) for s in (normal, small)]
        try:
            for f in futures:
                f.result()
        except BaseException:
            for s in (normal, small):
                s.kill()
            raise
    return normal, small


def print_table(report: dict) -> None:
    print(f"model {report['model']}, split {report['split']}, {report['bits']} bits, "
          f"{report['payload_bytes']} B/payload, {report['clients']} clients; small queue "
          f"--max-queue {report['max_queue']}")
    head = (f"{'phase':11s} {'s':>5s} {'offered/s':>9s} {'ok/s':>7s} {'ok':>7s} {'503':>6s} "
            f"{'errors':>6s} {'p50 ms':>8s} {'p99 ms':>8s} {'503 p99':>8s} {'healthz p99':>11s} "
            f"{'srv cpu ms/req':>14s}")
    print(head)
    for name in ("saturation", "sustained", "overload"):
        r = report["phases"].get(name)
        if r is None:
            continue

        def f(v, fmt="8.1f"):
            return format(v, fmt) if v is not None else "-".rjust(int(fmt.split(".")[0]))

        print(f"{name:11s} {r['seconds']:5.1f} {f(r['offered_rps'], '9.1f')} {r['rps_ok']:7.1f} "
              f"{r['ok']:7d} {r['overloaded_503']:6d} {r['errors']:6d} {f(r['ok_p50_ms'])} "
              f"{f(r['ok_p99_ms'])} {f(r['503_p99_ms'])} {f(r['healthz_p99_ms'], '11.1f')} "
              f"{r['server_cpu_ms_per_request']:14.2f}")
    print(f"same workers after: {report['phases']['same_workers_after']}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.load", description=__doc__.split("\n")[0])
    p.add_argument("--bundle", type=Path, help=f"default: the tests' tiny model, built into {DEFAULT_BUNDLE}")
    p.add_argument("--split", default="res_add")
    p.add_argument("--bits", type=int, default=8)
    p.add_argument("--clients", type=int, default=64)
    p.add_argument("--saturation-s", type=float, default=10.0)
    p.add_argument("--seconds", type=float, default=60.0, help="the sustained phase")
    p.add_argument("--overload-s", type=float, default=20.0)
    p.add_argument("--load-share", type=float, default=0.5,
                   help="sustained offered load as a share of the measured capacity")
    p.add_argument("--max-queue", type=int, default=4, help="of the overloaded server")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    if args.bundle is None:
        from benchmarks.faults import ensure_tiny_bundle

        args.bundle = ensure_tiny_bundle(DEFAULT_BUNDLE)
    payloads = make_payloads(args.bundle, args.split, args.bits)
    work = Path(tempfile.mkdtemp(prefix="load-"))
    servers = ()
    try:
        servers = start_both(args.bundle, work, args.max_queue)
        phases = run_phases(*servers, payloads, clients=args.clients, saturation_s=args.saturation_s,
                            sustained_s=args.seconds, overload_s=args.overload_s,
                            load_share=args.load_share)
        codes = [s.stop() for s in servers]
        tracebacks = sum(s.log_text().count("Traceback") for s in servers)
    finally:
        for s in servers:
            s.kill()
        shutil.rmtree(work, ignore_errors=True)
    report = {
        "bundle": str(args.bundle), "model": load_manifest(args.bundle).model.name,
        "split": args.split, "bits": args.bits, "payload_bytes": int(np.mean([len(x) for x in payloads])),
        "clients": args.clients, "max_queue": args.max_queue, "phases": phases,
        "server_exit_codes": codes, "server_log_tracebacks": tracebacks,
    }
    print_table(report)
    write_results(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
