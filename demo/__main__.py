"""make demo: the whole pipeline, live, over an emulated cellular uplink, on a weak and a strong board.

Builds (if missing) and profiles the default bundle (with --fast and nothing built, a smaller one:
fewer splits, fewer profiled images), starts the real cloud service behind an emulated link whose
trace has a fast phase (LTE) and a slow one (3G EV-DO), and for each device class runs the real
edge runtime with the `auto` policy (ours), then `device` and `cloud` on the same frames and
trace, and compares each with what the simulator predicts for the same run. On the weak board
offloading pays; on the strong one keeping frames on the device (onloading) does, and the
scheduler has to know which. Writes demo-report/.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
POLICY_NAMES = {"auto": "dyno", "device": "device", "cloud": "cloud"}
DEFAULT_DEVICES = ("pi-zero2", "jetson-nano")   # weak: offloading pays; strong: onloading does
TRACE_PHASES = ("lte", "3g-evdo")        # link classes of the default trace's two halves


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m demo", description=__doc__.splitlines()[0])
    p.add_argument("--fast", action="store_true", help="a shorter run (under 3 minutes)")
    p.add_argument("--bundle", type=Path, help="bundle to run (default build/fashion; with --fast "
                   "and no fresh build/fashion, a smaller build/fashion-fast)")
    p.add_argument("--source", default="zoo:fashion", help="model to convert when the bundle is missing")
    p.add_argument("--images", type=Path, help="frames from this folder (default: the test scenes)")
    p.add_argument("--trace", help="Mahimahi or 'time_s mbit_s' trace (default: the LTE then the 3G "
                   "EV-DO link class, half a run each; recorded traces when ../shared/traces has "
                   "them, else synthetic ones with the same statistics)")
    p.add_argument("--devices", default=",".join(DEFAULT_DEVICES),
                   help="device classes the edge emulates, comma-separated (default: "
                        f"{','.join(DEFAULT_DEVICES)}; see `python -m scheduler.simulate --list-devices`)")
    p.add_argument("--device", help="one device class (instead of --devices)")
    p.add_argument("--duration", type=float, help=f"seconds per live run (default {RUN_S:g}, "
                   f"{FAST_RUN_S:g} with --fast)")
    p.add_argument("--rtt-ms", type=float, default=40.0)
    p.add_argument("--max-splits", type=int, help=f"splits to convert (default {FULL_SPLITS}, "
                   f"{FAST_SPLITS} for the fast bundle)")
    p.add_argument("--profile-limit", type=int, help=f"images to profile on (default {FULL_PROFILE_IMAGES}, "
                   f"{FAST_PROFILE_IMAGES} for the fast bundle)")
    p.add_argument("--out", type=Path, default=REPO / "demo-report")
    p.add_argument("--no-netns", action="store_true", help="use the in-process link even as root")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    # A plain kill (SIGTERM) unwinds like Ctrl-C, so the cloud server and the network namespace
    # go away with the demo instead of outliving it.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    duration = args.duration or (FAST_RUN_S if args.fast else RUN_S)
    t_start = time.monotonic()
    try:
        choose_bundle(args)
        ensure_bundle(args, args.profile_limit)
        trace, trace_name = load_trace(args.trace, duration)
        classes = device_classes(args)
    except (RuntimeError, ValueError, OSError) as e:
        print(f"demo: error: {str(e).splitlines()[0]}", file=sys.stderr)
        return 2
    from demo.link import open_link

    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    with open_link(trace, args.rtt_ms, prefer_netns=not args.no_netns) as link:
        print(f"demo: link = {link.kind}; trace {trace_name}, {trace.mean_bps / 1e6:.2f} Mbit/s mean; "
              f"RTT {args.rtt_ms:.0f} ms; device classes {', '.join(classes)} (real head times "
              f"padded to each)")
        server = start_cloud(args.bundle, link)
        try:
            frames = load_frames(args)
            for device in classes:
                runs = {policy: live_run(args, link, server["url"], policy, frames, duration, device)
                        for policy in ("auto", "device", "cloud")}
                results.append((device, runs))
        finally:
            stop_cloud(server)
    class_reports = []
    for device, runs in results:
        sims = {p: simulate(args, trace, p, duration, device) for p in runs}
        class_reports.append(class_report(device, runs, sims))
        plot_timeline(runs["auto"], trace, args.out / f"timeline-{device}.png", args, device)
    shutil.copy(args.out / f"timeline-{classes[0]}.png", args.out / "timeline.png")
    report = build_report(args, class_reports, link.kind, trace_name, duration,
                          time.monotonic() - t_start)
    print_table(report)
    if (args.bundle / "pareto.png").exists():
        shutil.copy(args.bundle / "pareto.png", args.out / "pareto.png")
    (args.out / "summary.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"demo: wrote {args.out}/summary.json, timeline-<class>.png, pareto.png "
          f"in {time.monotonic() - t_start:.0f} s")
    return 0


def device_classes(args) -> list[str]:
    """The classes to run, each one slower than this host (a live run can only slow the board
    down to a class's speed, not speed it up)."""
    from scheduler import devices
    from scheduler.bundle import load_bundle

    names = [args.device] if args.device else [n.strip() for n in args.devices.split(",") if n.strip()]
    if not names:
        raise ValueError("--devices names no device class")
    bundle = load_bundle(args.bundle)
    usable = []
    for name in names:
        factor = bundle.device_factor(devices.device_class(name))
        if factor < 1.0 and name != "this-machine":
            print(f"demo: skipping {name}: it is {1 / factor:.1f}x faster than this host, which "
                  f"cannot run as fast as it (pick a slower class)", file=sys.stderr)
            continue
        usable.append(name)
    if not usable:
        raise ValueError(f"every device class in {names} is faster than this host")
    return usable


# ---------------------------------------------------------------- steps

SOURCE_STAMP = ".demo-source"  # in the bundle: what it was converted from (rebuilt when it changes)


def source_fingerprint(source: str) -> str:
    """The source and a hash of its weights: a model that changed needs a new bundle."""
    import hashlib

    if source == "zoo:fashion":
        meta = json.loads((REPO / "models" / "fashion.json").read_text())
        return f"{source} weights {meta['weights_sha256']}"
    path = Path(source)
    if path.is_file():
        return f"{source} file {hashlib.sha256(path.read_bytes()).hexdigest()}"
    return source


#: Seconds per live run. Six runs of 20 s keep `make demo` from nothing under 4 minutes here;
#: measured with the bundle built, 20 s runs met every goal that 45 s runs did (live within
#: 0.94-1.09x of the simulator, pi-zero2 dyno 2.19x device-only), `--duration 45` for longer ones.
RUN_S, FAST_RUN_S = 20.0, 15.0
FULL_SPLITS, FULL_PROFILE_IMAGES = 12, 300
# --fast with nothing built: fewer splits on fewer images, in a bundle of its own, so that the
# full demo never inherits a thin profile (the profiler's cost is per split and per image).
FAST_SPLITS, FAST_PROFILE_IMAGES = 6, 100
DEFAULT_BUNDLE = REPO / "build" / "fashion"
FAST_BUNDLE = REPO / "build" / "fashion-fast"


def choose_bundle(args) -> None:
    """Fill in --bundle, --max-splits and --profile-limit: the full bundle when it is built from
    this source and profiled on enough images (--fast reuses it too), else what to build.
    --fast never re-profiles a bundle measured on at least FAST_PROFILE_IMAGES images."""
    fast_default = args.fast and args.bundle is None and not bundle_is_ready(
        DEFAULT_BUNDLE, source_fingerprint(args.source), FULL_PROFILE_IMAGES)
    if args.bundle is None:
        args.bundle = FAST_BUNDLE if fast_default else DEFAULT_BUNDLE
    if args.max_splits is None:
        args.max_splits = FAST_SPLITS if fast_default else FULL_SPLITS
    if args.profile_limit is None:  # a short run is content with a thinner profile
        args.profile_limit = FAST_PROFILE_IMAGES if args.fast else FULL_PROFILE_IMAGES


def bundle_is_ready(bundle: Path, fingerprint: str, min_images: int) -> bool:
    """Converted from `fingerprint` with TFLite tails, profiled on at least `min_images` images,
    device-profiled."""
    stamp = bundle / SOURCE_STAMP
    if not stamp.is_file() or stamp.read_text().strip() != fingerprint or not _has_tflite_tails(bundle):
        return False
    return profiled_images(bundle) >= min_images and (bundle / "device-this-machine.json").exists()


def profiled_images(bundle: Path) -> int:
    """How many images the bundle's profile measured (0: none, or one this build cannot read,
    so the demo profiles again)."""
    from splitinfer.bundle.profile import PROFILE_FILE, load_profile
    from splitinfer.errors import FormatError

    try:
        return load_profile(bundle / PROFILE_FILE).images
    except FormatError:
        return 0


def ensure_bundle(args, profile_limit: int) -> None:
    py = sys.executable
    b = args.bundle
    stamp = b / SOURCE_STAMP
    want = source_fingerprint(args.source)
    have = stamp.read_text().strip() if stamp.is_file() else None
    stale = (b / "manifest.json").exists() and not _has_tflite_tails(b)
    if not (b / "manifest.json").exists() or have != want or stale:
        if stale and have == want:
            print(f"demo: {b} predates TFLite tails (the CPU cloud's fast backend); converting again")
        elif (b / "manifest.json").exists():
            print(f"demo: {b} is not from {want} ({have or 'unknown source'}); converting again")
        print(f"demo: converting {args.source} -> {b}")
        _step([py, "-m", "converter", args.source, "--out", str(b), "--max-splits", str(args.max_splits)])
        stamp.write_text(want + "\n")
    if args.images:  # a folder smaller than the limit is profiled whole
        from edge_runtime.images import list_images

        profile_limit = min(profile_limit, len(list_images(args.images)))
    have_images = profiled_images(b)
    if have_images < profile_limit:
        if have_images:
            print(f"demo: {b}'s profile measured {have_images} images, fewer than {profile_limit}")
        print(f"demo: profiling {b} on {profile_limit} images")
        cmd = [py, "-m", "converter.profile", str(b), "--limit", str(profile_limit)]
        if args.images:
            cmd += ["--data", str(args.images)]
        _step(cmd)
    if not (b / "device-this-machine.json").exists():
        _step([py, "-m", "edge_runtime.profile", str(b)])


def _has_tflite_tails(bundle: Path) -> bool:
    try:
        return bool(json.loads((bundle / "manifest.json").read_text()).get("tails_tflite"))
    except (OSError, ValueError):
        return False


def load_trace(spec: str | None, duration: float):
    """The user's trace, or a fast phase then a slow one, half a run each."""
    from scheduler.links import link_trace
    from scheduler.traces import phases, read_trace

    if spec:
        return read_trace(Path(spec)), Path(spec).name
    parts, origins = [], []
    for name in TRACE_PHASES:
        trace, origin = link_trace(name, duration_s=max(60.0, duration))
        parts.append((trace, duration / 2))
        origins.append(f"{name} ({origin.split(' /')[0] if origin.startswith('recording') else origin})")
    return phases("+".join(TRACE_PHASES), parts), " then ".join(origins)


def start_cloud(bundle: Path, link) -> dict:
    port = _free_port()
    log = open(bundle.parent / "demo-cloud.log", "ab")
    argv = link.wrap([sys.executable, "-m", "cloud_runtime", "--bundle", str(bundle), "--host", link.host,
                      "--port", str(port), "--workers", "1"])
    proc = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT,
                            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, start_new_session=True)
    url = f"http://{link.host}:{port}"
    import requests

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the cloud service exited; see {bundle.parent / 'demo-cloud.log'}")
        try:
            r = requests.get(f"{url}/readyz", timeout=2)
            if r.status_code == 200:
                print(f"demo: cloud service ready at {url} on {r.json().get('device')}")
                return {"proc": proc, "url": url}
        except requests.RequestException:
            pass
        time.sleep(0.3)
    stop_cloud({"proc": proc})
    raise RuntimeError("the cloud service did not become ready within 120 s")


def stop_cloud(server: dict) -> None:
    import signal

    proc = server["proc"]
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def load_frames(args):
    from edge_runtime.runner import Frame

    if args.images:
        from edge_runtime.images import list_images, load_image

        return [Frame(i, load_image(e.path), e.label, e.path.name)
                for i, e in enumerate(list_images(args.images))]
    from models import scenes

    images, labels = scenes.make_scenes("test", np.arange(1000, 1600))  # not the profiled scenes
    return [Frame(i, img.astype(np.float32), int(label), f"test-{1000 + i}")
            for i, (img, label) in enumerate(zip(images, labels))]


def live_run(args, link, url: str, policy: str, frames, duration: float, device: str) -> dict:
    from edge_runtime.runner import EdgeConfig, EdgeRuntime, Frame, summarize

    config = EdgeConfig(policy=policy, device_class=device, max_drop_pp=1.0,
                        objective="throughput")
    rt = EdgeRuntime(args.bundle, url, config, before_send=link.before_send)
    rows, lock = [], threading.Lock()
    stop = threading.Event()
    name = f"{device}/{POLICY_NAMES[policy]}"

    def stream():
        i = 0
        while link.elapsed_s() < duration:
            f = frames[i % len(frames)]
            yield Frame(i, f.image, f.label, f.name)
            i += 1

    def on_result(r):
        with lock:
            rows.append({**r.to_json(), "link_mbps": link.rate_mbps(),
                         "est_mbps": rt.scheduler.state().bandwidth_bps / 1e6})

    def ticker():
        last = 0
        while not stop.wait(1.0):
            with lock:
                new, done = rows[last:], list(rows)
                last = len(rows)
            if not new:
                print(f"  [{name:15s}] t={link.elapsed_s():5.1f}s link {link.rate_mbps():5.2f} Mbit/s  (waiting)")
                continue
            acc = [r["correct"] for r in done if r["correct"] is not None]
            r = new[-1]
            print(f"  [{name:15s}] t={link.elapsed_s():5.1f}s link {link.rate_mbps():5.2f} Mbit/s "
                  f"est {r['est_mbps']:5.2f}  {len(new):3d} fps  {r['split'][:22]:22s} "
                  f"{r.get('encoding', '-'):>11s} {np.mean([x['bytes'] for x in new]):7.0f} B  "
                  f"{np.mean([x['latency_ms'] for x in new]):6.0f} ms  acc {np.mean(acc) if acc else 0:.3f}")

    print(f"demo: live run '{name}' for {duration:.0f} s")
    tick = threading.Thread(target=ticker, daemon=True)
    with rt:
        link.start()
        tick.start()
        t0 = time.monotonic()
        results = rt.run(stream(), on_result=on_result)
        wall = time.monotonic() - t0
        stop.set()
        tick.join()
        summary = {**summarize(results, wall), **rt.runtime_info, "cloud_errors": len(rt.events)}
    return {"summary": summary, "rows": sorted(rows, key=lambda r: r["frame"])}


def simulate(args, trace, policy: str, duration: float, device: str) -> dict:
    from scheduler import devices
    from scheduler.bundle import load_bundle
    from scheduler.core import Objective, Slo
    from scheduler.simulate import SimParams
    from scheduler.simulate import simulate as run_sim

    bundle = load_bundle(args.bundle)
    # The live cloud is this machine's CPU, so the simulator is told so.
    table = bundle.table_for(devices.device_class(device), devices.cloud_class("cpu"))
    sim_policy = {"auto": "dyno", "device": "device", "cloud": "cloud"}[policy]
    # static_fallback: the live cloud policy falls back to the device in outages, as dyno does
    params = SimParams(frames=100000, duration_s=duration, rtt_ms=args.rtt_ms, pipeline_depth=4,
                       static_fallback=True)
    res = run_sim(table, trace, sim_policy, Objective.single("throughput"), Slo(max_drop_pp=1.0), params,
                  keep_timeline=False)
    return res.summary


def class_report(device: str, runs: dict, sims: dict) -> dict:
    """One device class: each policy live and simulated, and dyno against the fixed ones."""
    rows = {}
    for policy, run in runs.items():
        live, sim = run["summary"], sims[policy]
        rows[POLICY_NAMES[policy]] = {
            "live": live, "simulated": sim,
            "live_over_simulated_throughput": (live["throughput_fps"] / sim["throughput_fps"]
                                               if sim.get("throughput_fps") else None)}
    fps = {k: v["live"]["throughput_fps"] for k, v in rows.items()}
    best_fixed = max(("device", "cloud"), key=fps.get)
    dyno_bytes, cloud_bytes = (rows[k]["live"]["bytes_per_frame"] for k in ("dyno", "cloud"))
    return {"device_class": device, "policies": rows,
            "dyno_over_device_throughput": fps["dyno"] / fps["device"],
            "dyno_over_cloud_throughput": fps["dyno"] / fps["cloud"],
            "best_fixed": best_fixed,
            "dyno_over_best_fixed_throughput": fps["dyno"] / fps[best_fixed],
            "bytes_cloud_over_dyno": cloud_bytes / dyno_bytes if dyno_bytes else None}


def build_report(args, class_reports, link_kind, trace_name, duration, total_s) -> dict:
    return {"link": link_kind, "trace": trace_name, "duration_s_per_run": duration,
            "rtt_ms": args.rtt_ms, "bundle": str(args.bundle), "runs": class_reports,
            "total_s": round(total_s, 1)}


def print_table(report: dict) -> None:
    print(f"\n{'class':10s} {'policy':8s} {'fps live':>9s} {'fps sim':>8s} {'live/sim':>8s} "
          f"{'lat ms':>7s} {'p95 ms':>7s} {'B/frame':>8s} {'accuracy':>8s} {'fallbk':>6s}")
    for run in report["runs"]:
        for name, row in run["policies"].items():
            live, sim = row["live"], row["simulated"]
            ratio = row["live_over_simulated_throughput"]
            acc = live["accuracy"]
            print(f"{run['device_class']:10s} {name:8s} {live['throughput_fps']:9.2f} "
                  f"{sim['throughput_fps']:8.2f} {ratio if ratio is not None else float('nan'):8.2f} "
                  f"{live['latency_ms_mean']:7.0f} {live['latency_ms_p95']:7.0f} "
                  f"{live['bytes_per_frame']:8.0f} {acc if acc is not None else float('nan'):8.3f} "
                  f"{live['fallbacks']:6d}")
    print()
    for run in report["runs"]:
        print(f"{run['device_class']:10s} dyno/device {run['dyno_over_device_throughput']:5.2f}x  "
              f"dyno/cloud {run['dyno_over_cloud_throughput']:5.2f}x  dyno/best fixed "
              f"({run['best_fixed']}) {run['dyno_over_best_fixed_throughput']:5.2f}x")
    print()


def plot_timeline(run: dict, trace, path: Path, args, device: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from splitinfer.bundle.manifest import load_manifest

    rows = run["rows"]
    order = {s.name: s.index for s in load_manifest(args.bundle).splits}
    full_depth = len(order)
    t = np.array([r["t_s"] for r in rows])
    depth = np.array([full_depth if r["where"] == "device" else order.get(r["split"], 0) for r in rows])
    lat = np.array([r["latency_ms"] for r in rows])
    fig, axes = plt.subplots(3, 1, figsize=(10, 7.5), sharex=True, dpi=110, layout="constrained")
    end = max(t.max() if t.size else 1.0, 1.0)
    bins = trace.rates_mbps(0.5, duration_s=end + 0.5)
    axes[0].step(np.arange(len(bins)) * 0.5, bins, where="post", color="grey", label="link (trace)")
    by_time = np.argsort(t, kind="stable")  # rows are in frame order; answers overtake
    est = np.array([r["est_mbps"] for r in rows])
    axes[0].plot(t[by_time], est[by_time], color="tab:blue", lw=1, label="edge estimate")
    axes[0].set_ylabel("uplink Mbit/s")
    axes[0].legend(fontsize=8, loc="upper right")
    _plot_choices(fig, axes[1], t, depth, rows, full_depth)
    fb = np.array([r["fallback"] for r in rows], dtype=bool)
    axes[2].scatter(t[~fb], lat[~fb], s=4, color="tab:green", label="answered")
    if fb.any():
        axes[2].scatter(t[fb], lat[fb], s=8, color="crimson", label="fallback on device")
    axes[2].set_ylabel("latency ms")
    axes[2].set_yscale("log")
    axes[2].set_xlabel("time since start of run (s)")
    axes[2].legend(fontsize=8, loc="upper right")
    fig.suptitle(f"dyno live: where each frame ran as the uplink changed ({device})")
    fig.savefig(path)
    plt.close(fig)


def _plot_choices(fig, ax, t: np.ndarray, depth: np.ndarray, rows: list[dict], full_depth: int) -> bool:
    """Each frame at its split depth: device-only and cloud-only frames (no bits) in greys, split
    frames coloured by bit width (2..8 a colour each, float16/32 the top one). The bits colour
    bar is drawn only when some frame was split: with device-only and JPEG frames alone it
    would explain nothing on the plot. Returns whether it was drawn."""
    from matplotlib.colors import BoundaryNorm

    bits = np.array([r["bits"] if isinstance(r["bits"], int) else -1 for r in rows])
    packed = bits > 0
    local = np.array([r["where"] == "device" for r in rows], dtype=bool)
    for mask, colour, label in ((local, "0.45", "device-only"),
                                (~local & ~packed, "0.7", "cloud-only (JPEG or raw input)")):
        if mask.any():
            ax.scatter(t[mask], depth[mask], s=6, color=colour, label=label)
    if packed.any():
        norm = BoundaryNorm(np.arange(1.5, 10.5, 1.0), 256)
        sc = ax.scatter(t[packed], depth[packed], c=np.minimum(bits[packed], 9), cmap="viridis", norm=norm, s=6)
        bar = fig.colorbar(sc, ax=ax, label="bits", pad=0.01, fraction=0.03, ticks=range(2, 10))
        bar.ax.set_yticklabels([str(b) for b in range(2, 9)] + ["16/32"])
    ax.set_yticks([0, full_depth])
    ax.set_yticklabels(["cloud-only", "device-only"])
    ax.set_ylabel("split (depth)")
    ax.legend(fontsize=8, loc="center right")
    return bool(packed.any())


def _step(cmd: list[str]) -> None:
    r = subprocess.run(cmd, cwd=REPO)
    if r.returncode != 0:
        raise RuntimeError(f"step failed ({r.returncode}): {' '.join(cmd[1:])}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


if __name__ == "__main__":
    sys.exit(main())
