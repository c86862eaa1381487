"""Load test of the real cloud server: requests/s and latency with batching on vs off.

    python -m benchmarks.cloud_load [--bundle build/fashion] [--seconds 5] [--clients 1,4,16]

Starts `python -m cloud_runtime` itself on free loopback ports (never anything else), first
lazy then eager to measure start-up (time to /readyz, per-tail load, first-request latency),
then one server with batching on (--max-batch) and one with it off (max-batch 1), driven in
turn at each client count: one thread and one keep-alive requests.Session per client, for a
fixed time each. Prints a table and writes benchmarks/results/cloud_load.json. Every phase is
bounded in time.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import requests

from benchmarks._common import write_results
from splitinfer.bundle.manifest import BundleError, load_manifest
from splitinfer.codec import pack
from splitinfer.testing import CloudProcess

REPO = Path(__file__).resolve().parents[1]
DEFAULT_BUNDLE = "build/fashion"
DEFAULT_OUT = REPO / "benchmarks" / "results" / "cloud_load.json"
READY_TIMEOUT_S = 240
PAYLOADS = 8


def make_payloads(bundle: Path, split_name: str, bits: int) -> list[bytes]:
    """Real head outputs for a few random images, packed as the edge would."""
    manifest = load_manifest(bundle)
    split = manifest.split(split_name)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(PAYLOADS, *manifest.model.input_shape)).astype(np.float32)
    if split.head is None:
        acts = list(images)
    else:
        from splitinfer.litert import HeadFiles

        head = HeadFiles(num_threads=1).head(bundle / split.head, split.head_signature)
        acts = [head(im[None])[0] for im in images]
    return [pack(a, bits, model_sha256=manifest.model.sha256, split_index=split.index) for a in acts]


def drive(url: str, payloads: list[bytes], clients: int, seconds: float) -> dict:
    """`clients` threads posting back to back for `seconds`; latency and server timings."""
    results: list[list[tuple[float, dict | None]]] = [[] for _ in range(clients)]
    start = threading.Barrier(clients + 1)
    deadline = [0.0]

    host, port = url.split("//", 1)[1].rsplit(":", 1)

    def client(i: int) -> None:
        # http.client, not requests: on a 2-core machine the load tool shares the CPUs with the
        # server, and requests costs ~1 ms of CPU per call that the server would not get.
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        headers = {"Content-Type": "application/octet-stream"}
        out = results[i]
        start.wait()
        n = i
        while time.perf_counter() < deadline[0]:
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/infer?k=1", body=payloads[n % len(payloads)], headers=headers)
                r = conn.getresponse()
                data = r.read()
                body = json.loads(data) if r.status == 200 else None
            except (OSError, http.client.HTTPException, ValueError):
                conn.close()
                conn = http.client.HTTPConnection(host, int(port), timeout=30)
                body = None
            out.append((time.perf_counter() - t0, body))
            n += 1
        conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    deadline[0] = time.perf_counter() + seconds
    t_start = time.perf_counter()
    cpu_start = time.process_time()  # this process is the load generator: its CPU is not the server's
    start.wait()
    for t in threads:
        t.join(seconds + 60)
    elapsed = time.perf_counter() - t_start
    client_cpu_s = time.process_time() - cpu_start
    flat = [x for r in results for x in r]
    ok = [(lat, b) for lat, b in flat if b is not None]
    lat_ms = np.array([1e3 * lat for lat, _ in ok]) if ok else np.array([np.nan])

    def mean(key):
        return float(np.mean([b[key] for _, b in ok])) if ok else float("nan")

    tail_per_req = float(np.mean([b["tail_ms"] / b["batch_size"] for _, b in ok])) if ok else float("nan")
    return {
        "clients": clients, "seconds": round(elapsed, 2), "requests": len(ok),
        "errors": len(flat) - len(ok), "rps": round(len(ok) / elapsed, 1),
        "p50_ms": round(float(np.percentile(lat_ms, 50)), 2),
        "p99_ms": round(float(np.percentile(lat_ms, 99)), 2),
        "batch_size_mean": round(mean("batch_size"), 2),
        "decode_ms_mean": round(mean("decode_ms"), 3), "queue_ms_mean": round(mean("queue_ms"), 3),
        "tail_ms_mean": round(mean("tail_ms"), 3), "tail_ms_per_request": round(tail_per_req, 3),
        "server_total_ms_mean": round(mean("total_ms"), 3),
        "client_cpu_ms_per_request": round(1e3 * client_cpu_s / len(ok), 4) if ok else None,
        "decode_share_of_tail": round(mean("decode_ms") / mean("tail_ms"), 3) if ok else None,
    }


def startup(bundle: Path, payload: bytes, logs: Path) -> dict:
    """Lazy vs eager: time to ready, per-tail load times, first and second request latency."""
    out = {}
    for mode in ("lazy", "eager"):
        server = CloudProcess(bundle, logs / f"startup-{mode}.log", ["--load", mode])
        ready_s = server.start(READY_TIMEOUT_S)
        try:
            s = requests.Session()
            lat = []
            for _ in range(3):
                t0 = time.perf_counter()
                r = s.post(server.url + "/v1/infer", data=payload, timeout=60)
                lat.append(1e3 * (time.perf_counter() - t0))
                r.raise_for_status()
            status = s.get(server.url + "/readyz").json()
        finally:
            server.stop()
        loads = status["loads"]
        out[mode] = {
            "ready_s": round(ready_s, 2), "backend_start_ms": status["backend_start_ms"],
            "first_request_ms": round(lat[0], 1), "second_request_ms": round(lat[1], 1),
            "third_request_ms": round(lat[2], 1), "device": status["device"],
            "tails_loaded": status["tails_loaded"],
            "load_ms_per_tail": {k.split("/", 1)[1]: v["load_ms"] for k, v in loads.items()},
            "warmup_ms_per_tail": {k.split("/", 1)[1]: v["warmup_ms"] for k, v in loads.items()},
        }
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cloud_load", description=__doc__.split("\n")[0])
    p.add_argument("--bundle", default=DEFAULT_BUNDLE)
    p.add_argument("--split", default=None, help="split to send (default: the middle one)")
    p.add_argument("--bits", type=int, default=8)
    p.add_argument("--seconds", type=float, default=5.0, help="per client count and mode")
    p.add_argument("--clients", default="1,4,16")
    p.add_argument("--max-batch", type=int, default=32)
    p.add_argument("--max-delay-ms", type=float, default=5.0)
    p.add_argument("--threads", type=int, default=32, help="server threads (same for both modes)")
    p.add_argument("--skip-startup", action="store_true", help="skip the lazy-vs-eager start-up runs")
    p.add_argument("--out", default=str(DEFAULT_OUT))
    args = p.parse_args(argv)

    bundle = Path(args.bundle)
    try:
        manifest = load_manifest(bundle)
    except BundleError as e:
        print(f"error: {e} (for the default, build {DEFAULT_BUNDLE} with: python -m converter "
              f"SOURCE --out {DEFAULT_BUNDLE}; or pass --bundle DIR)", file=sys.stderr)
        return 2
    split = args.split or manifest.splits[len(manifest.splits) // 2].name
    try:
        clients = [int(c) for c in args.clients.split(",")]
        payloads = make_payloads(bundle, split, args.bits)
    except (KeyError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    logs = Path(args.out).parent / "cloud_load_logs"
    logs.mkdir(parents=True, exist_ok=True)

    report: dict = {
        "bundle": str(bundle), "model": manifest.model.name, "split": split, "bits": args.bits,
        "payload_bytes": int(np.mean([len(x) for x in payloads])), "seconds_per_run": args.seconds,
        "loadavg_at_start": list(os.getloadavg()),  # write_results adds the one at the end
    }
    if not args.skip_startup:
        report["startup"] = startup(bundle, payloads[0], logs)
    modes = {"batching_on": ["--max-batch", str(args.max_batch), "--max-delay-ms", str(args.max_delay_ms)],
             "batching_off": ["--max-batch", "1", "--max-delay-ms", "0"]}
    # Both servers stay up and the runs alternate (on, off at each client count), so drift in
    # what else the machine is doing hits both modes alike; an idle server costs nothing.
    runs: dict[str, list[dict]] = {mode: [] for mode in modes}
    servers: dict[str, CloudProcess] = {}
    try:
        for mode, flags in modes.items():
            servers[mode] = CloudProcess(bundle, logs / f"{mode}.log", ["--threads", str(args.threads), *flags])
            servers[mode].start(READY_TIMEOUT_S)
        for server in servers.values():
            drive(server.url, payloads, max(clients), min(2.0, args.seconds))  # warm every bucket
        report["device"] = requests.get(servers["batching_on"].url + "/readyz").json()["device"]
        for c in clients:
            for mode, server in servers.items():
                runs[mode].append(drive(server.url, payloads, c, args.seconds))
    finally:
        for server in servers.values():
            server.stop()
    report["runs"] = runs
    report["rps_ratio_on_over_off"] = {
        str(on["clients"]): round(on["rps"] / off["rps"], 2) if off["rps"] else None
        for on, off in zip(runs["batching_on"], runs["batching_off"])}
    report["goal"] = "batching on >= 2x requests/s of batching off at 16 clients"

    print_table(report)
    out = write_results(Path(args.out), report)
    print(f"wrote {out}")
    return 0


def print_table(report: dict) -> None:
    print(f"model {report['model']}, split {report['split']}, {report['bits']} bits, "
          f"{report['payload_bytes']} B/payload, device {report.get('device')}")
    if "startup" in report:
        for mode, s in report["startup"].items():
            loads = s["load_ms_per_tail"]
            print(f"  {mode:5s}: ready {s['ready_s']:.1f} s (backend {s['backend_start_ms']} ms), "
                  f"{s['tails_loaded']} tails loaded ({sum(loads.values()):.0f} ms load + "
                  f"{sum(s['warmup_ms_per_tail'].values()):.0f} ms warm-up), first request "
                  f"{s['first_request_ms']:.1f} ms, then {s['second_request_ms']:.1f} ms")
    head = (f"{'mode':13s} {'clients':>7s} {'req/s':>8s} {'p50 ms':>8s} {'p99 ms':>8s} "
            f"{'batch':>6s} {'decode ms':>9s} {'tail ms':>8s} {'dec/tail':>8s} {'errors':>6s}")
    print(head)
    for mode, rows in report["runs"].items():
        for r in rows:
            print(f"{mode:13s} {r['clients']:7d} {r['rps']:8.1f} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} "
                  f"{r['batch_size_mean']:6.2f} {r['decode_ms_mean']:9.3f} {r['tail_ms_mean']:8.3f} "
                  f"{r['decode_share_of_tail']:8.3f} {r['errors']:6d}")
    print("req/s ratio on/off: " + ", ".join(
        f"{c} clients {v}x" for c, v in report["rps_ratio_on_over_off"].items()))


if __name__ == "__main__":
    sys.exit(main())
