"""Faults during a live stream: the real edge runtime against the real cloud service, broken on purpose.

    python -m benchmarks.faults [--bundle DIR] [--fps 20] [--link auto|netns|inprocess]
                                [--fault-s 5] [--outage-s 10] [--out benchmarks/results/faults.json]

One `python -m cloud_runtime --fault-injection` serves the bundle; one EdgeRuntime per policy
(a fixed split and `auto`) streams frames at `--fps` through one emulated uplink, all at once.
In turn: the link drops to zero for `--outage-s` (the trace's outage), the service answers 503,
then 500 (POST /v1/_faults), hangs past the latency SLO, and is killed (SIGKILL) and restarted.
After each fault the scenario waits until every policy onloads again. Per fault and policy it
reports the fallbacks (failed uploads finished on the device, and frames sent to the device while
the cloud was down), the time from the end of the fault to the first frame answered by the cloud
again, and the worst latency; every frame must be answered exactly once. Prints a table and
writes benchmarks/results/faults.json. tests/test_reliability_faults.py runs a shorter scenario
with the same code and asserts on it.

The link: `netns` (root, `ip` and `tc`: the service runs in a network namespace behind a tc tbf
veth, which cannot go below 8 kbit/s) or `inprocess` (demo.link.TokenBucketLink following the
same trace; an upload that it cannot deliver within the request's timeout fails as a socket
timeout would). `auto` picks netns when it can.

The tiny test model runs in 0.02 ms here, so `auto` would never offload it: the scenario gives
the runtimes a copy of the bundle whose device profile claims a `SLOW_DEVICE_FULL_MS` board.
Every wait is bounded; the service is killed at the end whatever happens.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import requests

REPO = Path(__file__).resolve().parents[1]

from benchmarks._common import write_results
from demo.link import NetnsLink, TokenBucketLink
from edge_runtime.runner import EdgeConfig, EdgeRuntime, Frame, FrameResult
from scheduler.traces import outage
from splitinfer.testing import CloudProcess

DEFAULT_OUT = REPO / "benchmarks" / "results" / "faults.json"
DEFAULT_BUNDLE = REPO / "build" / "reliability-tiny"
SLOW_DEVICE_FULL_MS = 200.0
LINK_MBPS = 10.0
RTT_MS = 20.0
FAULTS = ("link_zero", "error_503", "error_500", "hang", "kill_restart")
LINKS = ("auto", "netns", "inprocess")


# ---- pieces ---------------------------------------------------------------------------------


def slow_device_copy(bundle: Path, dst: Path, full_ms: float = SLOW_DEVICE_FULL_MS) -> Path:
    """A copy of `bundle` whose device profile says the whole model takes `full_ms` here."""
    if dst.exists():
        shutil.rmtree(dst)
    shutil.copytree(bundle, dst)
    path = dst / "device-this-machine.json"
    data = json.loads(path.read_text())
    data["full_ms"] = float(full_ms)
    path.write_text(json.dumps(data, indent=1) + "\n")
    return dst


class Stream:
    """One EdgeRuntime on its own thread, fed frames at its camera rate until `stop`."""

    def __init__(self, name: str, runtime: EdgeRuntime, shape: tuple[int, ...], seed: int):
        self.name, self.runtime = name, runtime
        rng = np.random.default_rng(seed)
        self._images = [rng.uniform(0, 255, shape).astype(np.float32) for _ in range(16)]
        self.answers: list[tuple[float, FrameResult]] = []  # (monotonic time, result) as answered
        self.returned: list[FrameResult] = []
        self.sent = 0
        self.error: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"stream-{name}", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout_s: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self.error = self.error or f"did not finish within {timeout_s} s of the stop"

    def cloud_answers_since(self, t: float) -> int:
        with self._lock:
            return sum(1 for at, r in self.answers if at >= t and _onloaded(r))

    def _frames(self) -> Iterator[Frame]:
        i = 0
        while not self._stop.is_set():
            yield Frame(i, self._images[i % len(self._images)], i % 10)
            i += 1
            self.sent = i

    def _on_result(self, r: FrameResult) -> None:
        with self._lock:
            self.answers.append((time.monotonic(), r))

    def _run(self) -> None:
        try:
            self.returned = self.runtime.run(self._frames(), on_result=self._on_result)
        except BaseException as e:  # reported, and fails the test
            self.error = f"{type(e).__name__}: {e}"


def _onloaded(r: FrameResult) -> bool:
    return r.where in ("split", "cloud") and not r.fallback


def set_fault(cloud: CloudProcess, mode: str, seconds: float | None = None) -> dict:
    body = {"mode": mode} if seconds is None else {"mode": mode, "seconds": seconds}
    r = requests.post(f"{cloud.url}/v1/_faults", json=body, headers=cloud.headers, timeout=10)
    r.raise_for_status()
    return r.json()


def make_link(kind: str, trace):
    if kind == "auto":
        kind = "netns" if NetnsLink.available() else "inprocess"
    if kind == "netns":
        return NetnsLink(trace, RTT_MS)
    if kind == "inprocess":
        return TokenBucketLink(trace, RTT_MS)
    raise ValueError(f"Expected one of {LINKS}. Received: link={kind!r}")


# ---- the scenario ---------------------------------------------------------------------------


@dataclass
class Scenario:
    fps: float = 20.0
    slo_ms: float = 500.0
    fixed: tuple[str, int] = ("res_add", 8)
    warmup_s: float = 6.0  # the outage starts this long after the streams (trace time)
    outage_s: float = 10.0
    fault_s: float = 3.0  # error_503, error_500
    hang_s: float = 3.0
    dead_s: float = 2.0  # killed for this long before the restart
    recover_timeout_s: float = 20.0
    settle_s: float = 1.0  # after onloading resumes, before the next fault
    restart_timeout_s: float = 120.0
    policies: tuple[str, ...] = ("fixed", "auto")


@dataclass
class FaultRecord:
    name: str
    t_start: float
    t_end: float
    detail: dict[str, Any] = field(default_factory=dict)


def run_scenario(cloud: CloudProcess, bundle: Path, link, sc: Scenario = Scenario(),
                 log=print) -> dict:
    """Run every fault once against `cloud` (started, with --fault-injection) through `link`."""
    from splitinfer.bundle.manifest import load_manifest

    shape = load_manifest(bundle).model.input_shape
    configs = {
        "fixed": EdgeConfig(policy="fixed", split=sc.fixed[0], bits=sc.fixed[1], camera_fps=sc.fps,
                            slo_ms=sc.slo_ms),
        "auto": EdgeConfig(policy="auto", camera_fps=sc.fps, slo_ms=sc.slo_ms),
    }
    streams = [Stream(p, EdgeRuntime(bundle, cloud.url, configs[p], before_send=link.before_send),
                      shape, seed=i) for i, p in enumerate(sc.policies)]
    faults: list[FaultRecord] = []
    notes: list[str] = []
    t0 = time.monotonic()

    def now() -> float:
        return time.monotonic() - t0

    def wait_onloading(since: float, what: str) -> float | None:
        """Seconds until every stream has a cloud answer after `since` (None: not in time)."""
        deadline = time.monotonic() + sc.recover_timeout_s
        while time.monotonic() < deadline:
            if all(s.cloud_answers_since(t0 + since) > 0 for s in streams):
                time.sleep(sc.settle_s)
                return now() - since
            if any(s.error for s in streams):
                break
            time.sleep(0.05)
        notes.append(f"not every policy onloaded within {sc.recover_timeout_s} s after {what}")
        return None

    try:
        link.start()
        t0 = time.monotonic()
        for s in streams:
            s.start()
        warm = wait_onloading(0.0, "the start")
        log(f"faults: onloading after {warm} s; link outage at {sc.warmup_s:g} s")
        if now() > sc.warmup_s:
            notes.append(f"warm-up took {now():.1f} s, past the outage start {sc.warmup_s} s")
        time.sleep(max(0.0, sc.warmup_s - now()))
        faults.append(FaultRecord("link_zero", sc.warmup_s, sc.warmup_s + sc.outage_s,
                                  {"link": link.kind}))
        time.sleep(max(0.0, sc.warmup_s + sc.outage_s - now()))
        wait_onloading(faults[-1].t_end, "link_zero")
        for mode, seconds in (("error_503", sc.fault_s), ("error_500", sc.fault_s),
                              ("hang", sc.hang_s)):
            log(f"faults: {mode} for {seconds:g} s at {now():.1f} s")
            t_start = now()
            set_fault(cloud, mode, seconds)
            time.sleep(seconds)
            t_end = now()
            hits = set_fault(cloud, "off")["hits"][mode]
            faults.append(FaultRecord(mode, t_start, t_end, {"requests_hit": hits}))
            wait_onloading(t_end, mode)
        log(f"faults: kill -9 at {now():.1f} s, restart after {sc.dead_s:g} s")
        t_start = now()
        cloud.kill()
        time.sleep(sc.dead_s)
        ready_s = cloud.start(timeout=sc.restart_timeout_s)
        faults.append(FaultRecord("kill_restart", t_start, now(),
                                  {"dead_s": sc.dead_s, "restart_to_ready_s": round(ready_s, 2)}))
        wait_onloading(faults[-1].t_end, "kill_restart")
    finally:
        for s in streams:
            s.stop()
        for s in streams:
            s.runtime.close()
    end = now()
    return {
        "scenario": {k: (list(v) if isinstance(v, tuple) else v) for k, v in sc.__dict__.items()},
        "link": link.kind, "duration_s": round(end, 2), "notes": notes,
        "faults": [{"name": f.name, "t_start_s": round(f.t_start, 3), "t_end_s": round(f.t_end, 3),
                    **f.detail} for f in faults],
        "policies": {s.name: _stream_report(s, faults, t0, end) for s in streams},
    }


def _stream_report(s: Stream, faults: list[FaultRecord], t0: float, end: float) -> dict:
    answered = [r.frame for _, r in s.answers]
    timeline = [(at - t0, r) for at, r in s.answers]
    events = list(s.runtime.events)
    out: dict[str, Any] = {
        "frames_sent": s.sent, "frames_answered": len(answered),
        "duplicates": len(answered) - len(set(answered)),
        "missing": len(set(range(s.sent)) - set(answered)),
        "returned_in_order": [r.frame for r in s.returned] == list(range(s.sent)),
        "error": s.error,
        "where": {w: sum(1 for r in s.returned if r.where == w) for w in ("device", "split", "cloud")},
        "fallbacks": sum(1 for r in s.returned if r.fallback),
        "cloud_errors": {k: sum(1 for e in events if e.get("kind") == k)
                         for k in sorted({e.get("kind") for e in events})},
        "max_latency_ms": round(max((r.latency_ms for r in s.returned), default=0.0), 1),
        "faults": {},
    }
    for i, f in enumerate(faults):
        seg_end = faults[i + 1].t_start if i + 1 < len(faults) else end
        seg = [(t, r) for t, r in timeline if f.t_start <= t < seg_end]
        back = next((t for t, r in timeline if t >= f.t_end and _onloaded(r)), None)
        before = [r for t, r in timeline if (faults[i - 1].t_end if i else 0.0) <= t < f.t_start]
        out["faults"][f.name] = {
            "frames": len(seg),
            "onloaded_before": sum(1 for r in before if _onloaded(r)),
            "fallbacks": sum(1 for _, r in seg if r.fallback),
            "failed_uploads": sum(1 for _, r in seg if r.fallback and r.bytes > 0),
            "device_while_down": sum(1 for _, r in seg if r.fallback and r.bytes == 0),
            "back_to_onloading_s": None if back is None else round(back - f.t_end, 3),
            "max_latency_ms": round(max((r.latency_ms for _, r in seg), default=0.0), 1),
        }
    return out


def print_table(report: dict) -> None:
    print(f"link: {report['link']}; {report['duration_s']} s; "
          f"fps {report['scenario']['fps']}, SLO {report['scenario']['slo_ms']} ms")
    head = (f"{'fault':13s} {'policy':6s} {'window s':>8s} {'frames':>6s} {'fallbk':>6s} "
            f"{'failed up':>9s} {'dev-only':>8s} {'back s':>7s} {'max lat ms':>10s}")
    print(head)
    for f in report["faults"]:
        for name, p in report["policies"].items():
            x = p["faults"][f["name"]]
            back = "-" if x["back_to_onloading_s"] is None else f"{x['back_to_onloading_s']:.2f}"
            print(f"{f['name']:13s} {name:6s} {f['t_end_s'] - f['t_start_s']:8.1f} {x['frames']:6d} "
                  f"{x['fallbacks']:6d} {x['failed_uploads']:9d} {x['device_while_down']:8d} "
                  f"{back:>7s} {x['max_latency_ms']:10.1f}")
    for name, p in report["policies"].items():
        print(f"{name}: {p['frames_sent']} frames, {p['frames_answered']} answered, "
              f"{p['duplicates']} duplicates, {p['missing']} missing, {p['fallbacks']} fallbacks, "
              f"where {p['where']}, cloud errors {p['cloud_errors']}, error {p['error']}")
    for n in report["notes"]:
        print(f"note: {n}")


# ---- CLI ------------------------------------------------------------------------------------


def ensure_tiny_bundle(path: Path) -> Path:
    """The tests' tiny model, converted and profiled once into `path` (the default bundle)."""
    if (path / "device-this-machine.json").is_file() and (path / "profile.json").is_file():
        return path
    import subprocess

    from splitinfer.testing import build_tiny_model

    work = Path(tempfile.mkdtemp(prefix="tiny-src-"))
    try:
        build_tiny_model().save(work / "tiny.keras")
        rng = np.random.default_rng(5)
        from PIL import Image

        rows = ["file,label"]
        for i in range(16):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(work / f"{i:02d}.png")
            rows.append(f"{i:02d}.png,{i % 10}")
        (work / "labels.csv").write_text("\n".join(rows) + "\n")
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        for cmd in (["converter", str(work / "tiny.keras"), "--out", str(path), "--no-progress"],
                    ["converter.profile", str(path), "--data", str(work), "--no-progress"],
                    ["edge_runtime.profile", str(path), "--no-progress", "--repeats", "3"]):
            subprocess.run([sys.executable, "-m", *cmd], cwd=REPO, env=env, check=True, timeout=600)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.faults", description=__doc__.split("\n")[0])
    p.add_argument("--bundle", type=Path, help=f"default: the tests' tiny model, built into {DEFAULT_BUNDLE}")
    p.add_argument("--fps", type=float, default=20.0)
    p.add_argument("--slo-ms", type=float, default=500.0)
    p.add_argument("--split", default="res_add")
    p.add_argument("--bits", type=int, default=8)
    p.add_argument("--link", default="auto", choices=LINKS)
    p.add_argument("--fault-s", type=float, default=5.0, help="how long 503, 500 and the hang last")
    p.add_argument("--outage-s", type=float, default=10.0)
    p.add_argument("--dead-s", type=float, default=5.0, help="killed this long before the restart")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = p.parse_args(argv)

    bundle = args.bundle or ensure_tiny_bundle(DEFAULT_BUNDLE)
    sc = Scenario(fps=args.fps, slo_ms=args.slo_ms, fixed=(args.split, args.bits),
                  outage_s=args.outage_s, fault_s=args.fault_s, hang_s=args.fault_s,
                  dead_s=args.dead_s, recover_timeout_s=30.0)
    work = Path(tempfile.mkdtemp(prefix="faults-"))
    trace = outage(LINK_MBPS, sc.warmup_s, sc.warmup_s + sc.outage_s, 3600.0)
    cloud = None
    try:
        edge_bundle = slow_device_copy(bundle, work / "bundle")
        with make_link(args.link, trace) as link:
            netns = isinstance(link, NetnsLink)
            cloud = CloudProcess(edge_bundle, work / "cloud.log", ["--fault-injection"],
                                 host=link.host, wrap=link.wrap if netns else None)
            cloud.start(timeout=sc.restart_timeout_s)
            report = run_scenario(cloud, edge_bundle, link, sc)
            cloud.stop()
        log_text = cloud.log_text()
        report["server_log_tracebacks"] = log_text.count("Traceback")
    finally:
        if cloud is not None:
            cloud.kill()
        shutil.rmtree(work, ignore_errors=True)
    print_table(report)
    write_results(args.out, report)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
