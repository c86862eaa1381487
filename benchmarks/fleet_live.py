"""benchmarks.fleet --live N: N real edge runtime processes against one real cloud service, and
the same fleet in the simulator.

Each device is its own process (benchmarks.fleet_device) with its own emulated board class and
its own uplink over the link class's trace, from its own offset: as root, each device runs in a
network namespace of its own with a tc tbf qdisc on its uplink, into the cloud's namespace
(demo.link.FleetNet); elsewhere, a token-bucket link in the process. The cloud is the real
service (gunicorn, one worker, this machine's CPU). Once a second the driver reads the
cloud's load from /readyz. At the end it checks that every device answered frames 0..n-1 once
each, and compares the fleet's frames/s with scheduler.fleet on the same classes, links, offsets
and a `cpu` cloud (the simulated cameras never wait: --camera-fps is set out of reach).
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from benchmarks._common import ROOT

SIM_CAMERA_FPS = 1e6   # live devices take frames as fast as their pipeline goes


def run_live(bundle: Path, n: int, seconds: float, mix, link: str, seed: int = 0,
             netns: bool | None = None) -> dict:
    """`netns=None`: a namespace per device where this machine allows it."""
    from demo.__main__ import start_cloud, stop_cloud
    from demo.link import FleetNet, TokenBucketLink, netns_available
    from scheduler.bundle import load_bundle
    from scheduler.fleet import FleetParams, assign_classes, fleet_traces, simulate_fleet
    from scheduler.traces import constant

    from edge_runtime.runner import EdgeConfig

    params = FleetParams(devices=n, mix=mix, duration_s=seconds, camera_fps=SIM_CAMERA_FPS,
                         cloud="cpu", seed=seed, pipeline_depth=EdgeConfig().pipeline_depth)
    classes = assign_classes(params)
    traces, rtts, origin = fleet_traces(link, seconds, seed)
    offsets = np.random.default_rng(seed).uniform(0, traces[0].duration_s, n).round(2)
    net = FleetNet(n) if (netns_available() if netns is None else netns) else None
    try:
        server = start_cloud(bundle, net or TokenBucketLink(constant(1000.0)))  # its host and wrap
    except BaseException:
        if net is not None:
            net.close()
        raise
    loads, stop = [], threading.Event()

    def poll():
        import requests

        t0 = time.monotonic()
        while not stop.wait(1.0):
            try:
                load = requests.get(server["url"] + "/readyz", timeout=2).json().get("current_load", {})
                loads.append({"t_s": round(time.monotonic() - t0, 1), **load})
            except (requests.RequestException, ValueError):
                pass

    poller = threading.Thread(target=poll, daemon=True)
    out_dir = Path(tempfile.mkdtemp(prefix="fleet-live-"))
    try:
        poller.start()
        procs = []
        for i, (cls, off) in enumerate(zip(classes, offsets)):
            argv = [sys.executable, "-m", "benchmarks.fleet_device", "--bundle", str(bundle),
                    "--cloud", server["url"], "--device", cls, "--link", link, "--offset-s", str(off),
                    "--seconds", str(seconds), "--out", str(out_dir / f"device-{i}.json")]
            if net is not None:
                argv = net.wrap_device(i, [*argv, "--uplink-dev", net.device_dev(i)])
            procs.append(subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
        errors = [p.communicate(timeout=seconds + 300)[1] for p in procs]
    finally:
        stop.set()
        stop_cloud(server)
        if net is not None:
            net.close()
    failed = [(i, e.decode(errors="replace").strip().splitlines()[-1:])
              for i, (p, e) in enumerate(zip(procs, errors)) if p.returncode != 0]
    if failed:
        raise RuntimeError(f"device processes failed: {failed[:3]}")
    devices = []
    for i in range(n):
        d = json.loads((out_dir / f"device-{i}.json").read_text())
        idx = sorted(f[0] for f in d["frames"])
        d["lost_or_duplicated"] = idx != list(range(len(idx)))
        devices.append(d)
    live_fps = sum(d["summary"]["frames"] for d in devices) / seconds
    sim = simulate_fleet(load_bundle(bundle), traces, rtts, "dyno",
                         replace(params, offsets_s=tuple(float(o) for o in offsets)))
    return {"devices": n, "seconds": seconds, "link": origin, "classes": classes,
            "uplinks": net.kind if net is not None else TokenBucketLink.kind,
            "offsets_s": offsets.tolist(), "fleet_fps_live": live_fps,
            "fleet_fps_sim": sim["fleet_fps"],
            "live_over_sim": live_fps / sim["fleet_fps"] if sim["fleet_fps"] else None,
            "no_frame_lost_or_duplicated": not any(d["lost_or_duplicated"] for d in devices),
            "per_device": [{"device": d["device"], "fps": d["summary"]["throughput_fps"],
                            "frames": d["summary"]["frames"], "where": d["summary"]["where"],
                            "fallbacks": d["summary"]["fallbacks"]} for d in devices],
            "cloud_load": loads}


def print_live(r: dict) -> None:
    print(f"\nlive fleet: {r['devices']} edge processes on {r['link']}, one cloud worker, "
          f"{r['seconds']:g} s; uplinks: {r['uplinks']}")
    for i, d in enumerate(r["per_device"]):
        print(f"  device {i:2d} {d['device']:11s} {d['fps']:7.1f} fps  {d['frames']:6d} frames  "
              f"where {d['where']}  fallbacks {d['fallbacks']}")
    util = [ld.get("utilisation", 0.0) for ld in r["cloud_load"]]
    if util:
        print("  cloud utilisation per second: " + " ".join(f"{u:.2f}" for u in util))
    print(f"fleet {r['fleet_fps_live']:.1f} frames/s live, {r['fleet_fps_sim']:.1f} simulated "
          f"(live/sim {r['live_over_sim']:.2f}; goal within 25%); every frame answered once: "
          f"{r['no_frame_lost_or_duplicated']}")
