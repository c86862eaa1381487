"""TensorFlow vs LiteRT tails on a CPU cloud: serving, agreement, and the profiler's time.

    python -m benchmarks.cloud_backends [--bundle build/fashion] [--data DIR] [--seconds 5]
        [--clients 16] [--workers 1] [--agreement-images 300] [--profile-images 100]
        [--tail-rows 400] [--skip-profile] [--json PATH]

In one run, on the same bundle:
- serving: two real `python -m cloud_runtime` servers, `--tail-backend tf` and `litert`, up at
  once and driven in turn (so drift in the machine's load hits both) at an early, the middle and
  the late split: requests/s and p99 at `--clients` keep-alive clients;
- agreement: both backends' tails, as the cloud runs them (`cloud_runtime`'s backend classes,
  bucketed batches), on the real heads' activations of test scenes: top-1 agreement and the
  largest logit difference per split (test scenes for the default model, else `--data`);
- the tails alone: the same backend classes, no HTTP, at batch 1, 8 and 16 (ms per row, median),
  so that the backend's own speed-up is told apart from what the HTTP path costs;
- profiler: `python -m converter.profile` on a copy of the bundle with each backend.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

import numpy as np

from benchmarks import _common as common
from benchmarks.cloud_load import drive, make_payloads
from splitinfer.bundle.manifest import BundleError, load_manifest
from splitinfer.testing import CloudProcess

DEFAULT_OUT = common.RESULTS / "cloud_backends.json"
BACKENDS = ("tf", "litert")
READY_TIMEOUT_S = 240
AGREEMENT_BATCH = 16  # one of the cloud's bucket sizes
TAIL_BATCHES = (1, 8, 16)  # bucket sizes: batch 1, and what 16 clients fill


def chosen_splits(manifest) -> dict[str, str]:
    """An early, the middle and the late split (the cloud-only `input` is not a split here)."""
    names = [s.name for s in manifest.splits if s.head is not None]
    middle = manifest.splits[len(manifest.splits) // 2].name  # benchmarks.cloud_load's default
    return {"early": names[0], "middle": middle, "late": names[-1]}


def serving(bundle: Path, splits: dict[str, str], clients: int, seconds: float, logs: Path,
            server_args: Sequence[str] = ()) -> list[dict]:
    payloads = {name: make_payloads(bundle, name, 8) for name in splits.values()}
    servers: dict[str, CloudProcess] = {}
    rows = []
    try:
        for backend in BACKENDS:
            servers[backend] = CloudProcess(bundle, logs / f"{backend}.log",
                                            ["--tail-backend", backend, *server_args])
            servers[backend].start(READY_TIMEOUT_S)
        for where, name in splits.items():
            for backend, server in servers.items():
                drive(server.url, payloads[name], clients, min(2.0, seconds))  # warm every bucket
                run = drive(server.url, payloads[name], clients, seconds)
                rows.append({"backend": backend, "split": name, "where": where, "req_s": run["rps"],
                             "p99_ms": run["p99_ms"], "p50_ms": run["p50_ms"],
                             "batch_size_mean": run["batch_size_mean"],
                             "tail_ms_per_request": run["tail_ms_per_request"], "errors": run["errors"],
                             "client_cpu_ms_per_request": run["client_cpu_ms_per_request"]})
                print(f"  {backend:6s} {where:6s} {name:26s} {run['rps']:7.1f} req/s, p99 {run['p99_ms']:.1f} ms",
                      flush=True)
    finally:
        for server in servers.values():
            server.stop()
    return rows


def tail_backends(bundle: Path) -> tuple[dict, dict]:
    """The bundle's tails by split, and both backends started, as the cloud builds them; built
    once and shared by the measurements (starting TensorFlow and loading tails twice is slow)."""
    from cloud_runtime.litert_backend import LiteRTTailBackend
    from cloud_runtime.registry import ModelRegistry
    from cloud_runtime.tf_backend import KerasTailBackend

    tails = {t.split: t for t in ModelRegistry.from_bundles([str(bundle)]).tails()}
    backends = {"tf": KerasTailBackend(), "litert": LiteRTTailBackend()}
    for backend in backends.values():
        backend.start()
    return tails, backends


def agreement(bundle: Path, prepared: tuple[dict, dict], images: int, data: Path | None = None) -> dict[str, dict]:
    """Per split: top-1 agreement of the LiteRT tail with the TensorFlow tail, and the largest
    logit difference, on the heads' activations of the first `images` test scenes."""
    from converter.datasets import load_dataset
    from splitinfer.litert import HeadFiles

    manifest = load_manifest(bundle)
    data = load_dataset(manifest, data, limit=images, calibration=1).images
    tails, backends = prepared
    tf_backend, lite = backends["tf"], backends["litert"]
    out = {}
    for tail in tails.values():
        split = manifest.split(tail.split)
        if split.head is None:
            acts = data
        else:
            head = HeadFiles().head(bundle / split.head, split.head_signature)
            acts = np.concatenate([head(x[None]) for x in data])
        lite.load(tail)
        tf_backend.load(tail)
        a = np.concatenate([lite.run(tail, acts[i:i + AGREEMENT_BATCH]) for i in range(0, len(acts), AGREEMENT_BATCH)])
        b = np.concatenate([tf_backend.run(tail, acts[i:i + AGREEMENT_BATCH])
                            for i in range(0, len(acts), AGREEMENT_BATCH)])
        out[tail.split] = {"agreement": float(np.mean(a.argmax(-1) == b.argmax(-1))),
                           "max_logit_diff": float(np.max(np.abs(a - b))), "images": len(acts)}
    return out


def tail_only(prepared: tuple[dict, dict], splits: dict[str, str], rows_timed: int = 400) -> list[dict]:
    """Median ms per row of each backend's tail at each batch size, the backends alternating call
    by call (so a burst of load hits both alike), without HTTP, decoding or batching waits."""
    tails, backends = prepared
    rows, rng = [], np.random.default_rng(0)
    for where, name in splits.items():
        tail = tails[name]
        for backend in backends.values():
            backend.load(tail)
        for batch in TAIL_BATCHES:
            x = rng.normal(size=(batch, *tail.input_shape)).astype(np.float32)
            times: dict[str, list[float]] = {b: [] for b in backends}
            for i in range(3 + max(5, rows_timed // batch)):
                for b, backend in backends.items():
                    t0 = time.perf_counter()
                    backend.run(tail, x)
                    if i >= 3:  # the first calls warm up
                        times[b].append(time.perf_counter() - t0)
            for b in backends:
                rows.append({"backend": b, "split": name, "where": where, "batch": batch,
                             "ms_per_row": round(float(np.median(times[b])) * 1e3 / batch, 4)})
    return rows


def serving_ceiling(tf_ms: float, litert_ms: float, shared_ms: float, goal: float = 3.0) -> dict:
    """How far LiteRT/TF req/s can go when every request also pays `shared_ms` of machine time
    that does not depend on the backend (HTTP, decoding, answering, the load generator): the
    tails' ms per row plus that, as a ratio. And the most shared time that still leaves `goal`:
    (tf + s) / (litert + s) >= goal  <=>  s <= (tf - goal * litert) / (goal - 1)."""
    return {"ceiling": round((tf_ms + shared_ms) / (litert_ms + shared_ms), 3),
            "shared_ms_for_goal": round((tf_ms - goal * litert_ms) / (goal - 1), 4)}


def profile_time(bundle: Path, images: int, logs: Path, data: Path | None = None) -> list[dict]:
    """Seconds for `python -m converter.profile` on a copy of the bundle, per backend."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="profile-copy-") as tmp:
        copy = Path(tmp) / bundle.name
        shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns("profile.json", "calibration.json", "*.png"))
        for backend in ("litert", "tf"):
            t0 = time.perf_counter()
            with open(logs / f"profile-{backend}.log", "w") as log:
                extra = ["--data", str(data)] if data else []
                rc = subprocess.run([sys.executable, "-m", "converter.profile", str(copy), "--limit", str(images),
                                     "--tail-backend", backend, "--no-progress", *extra],
                                    stdout=log, stderr=subprocess.STDOUT, cwd=common.ROOT).returncode
            seconds = time.perf_counter() - t0
            if rc != 0:
                raise RuntimeError(f"converter.profile --tail-backend {backend} exited {rc}; see {log.name}")
            rows.append({"backend": backend, "seconds": round(seconds, 1), "images": images})
            print(f"  profile {backend:6s} {images} images: {seconds:.1f} s", flush=True)
    return rows


def bundle_sizes(bundle: Path, manifest) -> dict[str, int]:
    def size(paths):
        return sum((bundle / p).stat().st_size for p in paths)

    return {"heads": size({s.head for s in manifest.splits if s.head}),
            "keras_tails": size([s.tail for s in manifest.splits]
                                + ([manifest.keras_model] if manifest.keras_model else [])),
            "tails_tflite": size([manifest.tails_tflite]) if manifest.tails_tflite else 0,
            "full_tflite": size([manifest.full]),
            "total": sum(p.stat().st_size for p in bundle.rglob("*") if p.is_file())}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.cloud_backends", description=__doc__.split("\n")[0])
    p.add_argument("--bundle", type=Path, default=common.DEFAULT_BUNDLE)
    p.add_argument("--data", type=Path, help="folder of images (labels.csv) for a model other than the default")
    p.add_argument("--seconds", type=float, default=5.0, help="per backend and split")
    p.add_argument("--clients", type=int, default=16)
    p.add_argument("--workers", type=int, default=1, help="gunicorn workers of each server")
    p.add_argument("--agreement-images", type=int, default=300)
    p.add_argument("--profile-images", type=int, default=100)
    p.add_argument("--tail-rows", type=int, default=400, help="rows timed per backend, split and batch size "
                   "for the tails alone")
    p.add_argument("--skip-profile", action="store_true")
    p.add_argument("--json", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)
    try:
        manifest = load_manifest(args.bundle)
    except BundleError as e:
        return common.fail(f"{str(e).splitlines()[0]} (build it with: {common.BUILD_HINT})")
    if not manifest.tails_tflite:
        return common.fail(f"{args.bundle} has no TFLite tails: reconvert it with python -m converter")
    logs = args.json.parent / "cloud_backends_logs"
    logs.mkdir(parents=True, exist_ok=True)
    splits = chosen_splits(manifest)
    report: dict = {"bundle": str(args.bundle), "model": manifest.model.name, "clients": args.clients,
                    "workers": args.workers,
                    "seconds_per_run": args.seconds, "splits": splits, "loadavg_at_start": list(os.getloadavg()),
                    "bundle_bytes": bundle_sizes(args.bundle, manifest)}
    print(f"serving, {args.clients} clients, {args.workers} worker(s) per server, {args.seconds:g} s per run")
    report["serving"] = serving(args.bundle, splits, args.clients, args.seconds, logs, ["--workers", str(args.workers)])
    try:
        prepared = tail_backends(args.bundle)
        print("the tails alone, no HTTP")
        report["tail_only"] = tail_only(prepared, splits, args.tail_rows)
        print(f"agreement on {args.agreement_images} test scenes")
        agree = agreement(args.bundle, prepared, args.agreement_images, args.data)
    except (BundleError, ValueError, OSError) as e:
        return common.fail(str(e).splitlines()[0])
    report["agreement"] = {k: v["agreement"] for k, v in agree.items()}
    report["max_logit_diff"] = {k: v["max_logit_diff"] for k, v in agree.items()}
    if not args.skip_profile:
        report["profile"] = profile_time(args.bundle, args.profile_images, logs, args.data)

    def rps(backend, split):
        return next(r["req_s"] for r in report["serving"] if r["backend"] == backend and r["split"] == split)

    report["req_s_ratio_litert_over_tf"] = {w: common.ratio(rps("litert", n), rps("tf", n)) for w, n in splits.items()}
    secs = {r["backend"]: r["seconds"] for r in report.get("profile", [])}
    speedup = common.ratio(secs.get("tf"), secs.get("litert"))
    report["goals"] = [
        common.goal("LiteRT/TF req/s, middle split", report["req_s_ratio_litert_over_tf"]["middle"], ">=", 3, "x"),
        common.goal("profiler speed-up LiteRT/TF", speedup, ">=", 3, "x"),
        common.goal("worst top-1 agreement", min(report["agreement"].values()), ">=", 0.995),
    ]
    common.print_table(f"Serving ({args.clients} clients, {args.workers} worker(s); device /CPU:0)",
                       ["backend", "where", "split", "req/s", "p99 ms", "batch", "tail ms/req"],
                       [[r["backend"], r["where"], r["split"], r["req_s"], r["p99_ms"], r["batch_size_mean"],
                         r["tail_ms_per_request"]] for r in report["serving"]])
    ms = {(r["backend"], r["where"], r["batch"]): r["ms_per_row"] for r in report["tail_only"]}
    report["tail_only_ratio_tf_over_litert"] = {f"{w} batch {b}": common.ratio(ms[("tf", w, b)], ms[("litert", w, b)])
                                                for w in splits for b in TAIL_BATCHES}
    common.print_table("The tails alone (no HTTP): ms per row, median",
                       ["where", "batch", "tf", "litert", "tf/litert"],
                       [[w, b, ms[("tf", w, b)], ms[("litert", w, b)],
                         report["tail_only_ratio_tf_over_litert"][f"{w} batch {b}"]]
                        for w in splits for b in TAIL_BATCHES], digits=3)
    # The load generator shares this machine: its CPU per request, over the cores, is machine time
    # each request costs either backend. Added to the tails alone at the batch 16 clients make:
    middle = next(r for r in report["serving"] if r["backend"] == "litert" and r["where"] == "middle")
    batch = min(TAIL_BATCHES, key=lambda b: abs(b - middle["batch_size_mean"]))
    client_ms = middle["client_cpu_ms_per_request"] / (os.cpu_count() or 1)
    report["middle_ceiling"] = {"batch": batch, "client_machine_ms_per_request": round(client_ms, 4),
                                **serving_ceiling(ms[("tf", "middle", batch)], ms[("litert", "middle", batch)],
                                                  client_ms)}
    c = report["middle_ceiling"]
    print(f"\nmiddle split: the tails alone at batch {batch} with only the load generator's share "
          f"({client_ms:.3f} ms of machine time a request) cap LiteRT/TF at {c['ceiling']:.2f}x; 3x "
          f"leaves at most {c['shared_ms_for_goal']:.3f} ms a request outside the tails, the load "
          f"generator's {client_ms:.3f} included")
    common.print_table(f"Agreement, LiteRT vs TensorFlow tails ({args.agreement_images} test scenes)",
                       ["split", "top-1 agreement", "max logit diff"],
                       [[k, v["agreement"], f"{v['max_logit_diff']:.2e}"] for k, v in agree.items()], digits=4)
    if report.get("profile"):
        common.print_table("Profiler", ["backend", "images", "seconds"],
                           [[r["backend"], r["images"], r["seconds"]] for r in report["profile"]])
    sizes = report["bundle_bytes"]
    print(f"\nbundle {sizes['total'] / 1e6:.1f} MB: heads {sizes['heads'] / 1e6:.1f}, Keras tails "
          f"{sizes['keras_tails'] / 1e6:.1f}, tails.tflite {sizes['tails_tflite'] / 1e6:.1f}, "
          f"full.tflite {sizes['full_tflite'] / 1e6:.1f}")
    common.print_goals(report["goals"])
    print(f"wrote {common.write_results(args.json, report)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
