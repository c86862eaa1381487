"""Edge runtime costs on a real bundle: head switching, pipelining, and the fallback strategy.

    python -m benchmarks.edge_switch [--bundle build/fashion] [--data DIR] [--quick]

1. Switching: the same preloaded heads run the same number of frames, either in blocks (the same
   head frame after frame) or round-robin (a different head every frame). The difference per
   switch is what switching costs (goal < 1 ms). For comparison, a lazy switch: loading and
   allocating the interpreter on the switch, then running it.
2. Pipelining: the real EdgeRuntime with a real cloud (`python -m cloud_runtime`, started here
   on a free loopback port and stopped at the end), a fixed split at the median split, device
   padded to a Raspberry Pi 4 class board so head time matters. Frames/s strictly serial (each
   frame waits for the previous answer), with senders=1, pipeline_depth=1, and with the default
   settings, in the same run.
3. Fallback: a failed frame is finished by running the full model on the device from the frame.
   Finishing from the activation instead could save at most the head already spent; this reports
   full_ms against head_ms (device profile and timed now).

Prints tables and writes benchmarks/results/edge_switch.json.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from benchmarks import _common as common
from edge_runtime.heads import FULL, HeadPool
from splitinfer.litert import HeadFiles, default_num_threads
from splitinfer.bundle.manifest import BundleError, Manifest, load_manifest
from splitinfer.bundle.profile import row_drop

DEFAULT_OUT = common.RESULTS / "edge_switch.json"
GOAL_SWITCH_MS = 1.0
DEVICE_CLASS = "rpi4"
READY_TIMEOUT_S = 240


@dataclass(frozen=True)
class Sizes:
    """How much of everything to run (the full run vs --quick)."""

    frames_per_head: int = 40  # per head per switching trial
    switch_rounds: int = 7
    lazy_heads: int = 6
    lazy_repeats: int = 3
    pipeline_frames: int = 60
    pipeline_warmup: int = 8
    pipeline_rounds: int = 5
    fallback_repeats: int = 30


QUICK = Sizes(frames_per_head=10, switch_rounds=3, lazy_heads=2, lazy_repeats=1,
              pipeline_frames=16, pipeline_warmup=3, pipeline_rounds=1, fallback_repeats=5)


# --------------------------------------------------------------------------------------------
# Pure math
# --------------------------------------------------------------------------------------------


def switch_counts(heads: int, frames_per_head: int) -> tuple[int, int]:
    """Switches in the blocked order and in the round-robin order of the same calls."""
    if heads < 2:
        return 0, 0
    return heads - 1, heads * frames_per_head - 1


def per_switch_ms(blocked_s: Sequence[float], rr_s: Sequence[float], heads: int,
                  frames_per_head: int) -> float | None:
    """Median over paired trials of the added time per extra switch (ms)."""
    sb, sr = switch_counts(heads, frames_per_head)
    if sr <= sb:
        return None
    diffs = [(r - b) / (sr - sb) for b, r in zip(blocked_s, rr_s)]
    return float(np.median(diffs) * 1e3)


def median_split(split_names: Sequence[str]) -> str:
    """The middle of the splits that have a head (topological order)."""
    if not split_names:
        raise ValueError("the bundle has no split with a head")
    return split_names[(len(split_names) - 1) // 2]


def pick_config(configs: list[dict], split: str, max_drop_pp: float) -> tuple[dict, str]:
    """Fewest bytes within the budget at `split`; else the most accurate one (and why)."""
    mine = [c for c in configs if c["split"] == split]
    if not mine:
        raise ValueError(f"profile.json has no configuration at split {split!r}")
    ok = [c for c in mine if row_drop(c) <= max_drop_pp]
    if ok:
        c = min(ok, key=lambda c: (c["bytes_mean"], c["bits"]))
        return c, f"fewest bytes within {max_drop_pp:g} pp"
    c = min(mine, key=lambda c: (row_drop(c), c["bytes_mean"]))
    return c, f"no config within {max_drop_pp:g} pp: the most accurate one"


def fallback_rows(device: dict | None, order: Sequence[str]) -> list[dict]:
    """Per split, from the device profile: head_ms, full_ms and the share a resume could save."""
    if not device:
        return []
    full = device["full_ms"]
    heads = device.get("heads_ms", {})
    return [{"split": s, "head_ms": heads[s], "full_ms": full,
             "max_saving_share": common.ratio(heads[s], full)} for s in order if s in heads]


# --------------------------------------------------------------------------------------------
# 1. Switching
# --------------------------------------------------------------------------------------------


def run_blocked(pool: HeadPool, heads: Sequence[str], frames: np.ndarray, n: int) -> tuple[float, dict]:
    """Each head n frames in a row; total seconds and per-head ms per frame."""
    per_head = {}
    t_all = time.perf_counter()
    for h in heads:
        t0 = time.perf_counter()
        for i in range(n):
            pool.run(h, frames[i % len(frames)])
        per_head[h] = (time.perf_counter() - t0) * 1e3 / n
    return time.perf_counter() - t_all, per_head


def run_round_robin(pool: HeadPool, heads: Sequence[str], frames: np.ndarray, n: int) -> float:
    """The same calls with a different head every frame; total seconds."""
    t0 = time.perf_counter()
    for i in range(n):
        f = frames[i % len(frames)]
        for h in heads:
            pool.run(h, f)
    return time.perf_counter() - t0


def measure_switching(pool: HeadPool, frames: np.ndarray, sizes: Sizes) -> dict:
    """Blocked vs round-robin over every loaded head, rounds interleaved to share the noise."""
    heads = pool.loaded
    n = sizes.frames_per_head
    for h in heads:  # warm-up
        pool.run(h, frames[0])
    blocked, rr, per_head = [], [], []
    for _ in range(sizes.switch_rounds):
        b, ph = run_blocked(pool, heads, frames, n)
        blocked.append(b)
        per_head.append(ph)
        rr.append(run_round_robin(pool, heads, frames, n))
    calls = len(heads) * n
    sb, sr = switch_counts(len(heads), n)
    warm = {h: float(np.median([ph[h] for ph in per_head])) for h in heads}
    return {
        "heads": heads,
        "frames_per_head": n,
        "rounds": sizes.switch_rounds,
        "switches_blocked": sb,
        "switches_round_robin": sr,
        "same_head_ms_per_frame": float(np.median(blocked) * 1e3 / calls),
        "alternating_ms_per_frame": float(np.median(rr) * 1e3 / calls),
        "alternating_vs_same": common.ratio(float(np.median(rr)), float(np.median(blocked))),
        "added_ms_per_switch": per_switch_ms(blocked, rr, len(heads), n),
        "warm_head_ms": warm,
    }


def measure_lazy(bundle: Path, manifest: Manifest, heads: Sequence[str], frames: np.ndarray,
                 warm_ms: dict, threads: int, sizes: Sizes) -> dict:
    """Load + allocate + first run of a head, as a switch would cost without preloading."""
    chosen = _spread(list(heads), sizes.lazy_heads)
    rows = []
    for h in chosen:
        split = manifest.split(h)
        times = []
        for _ in range(sizes.lazy_repeats):
            t0 = time.perf_counter()
            HeadFiles(threads).head(bundle / split.head, split.head_signature)(frames[0][None].astype(np.float32))
            times.append((time.perf_counter() - t0) * 1e3)
        load_run = float(np.median(times))
        rows.append({"split": h, "load_and_run_ms": load_run, "warm_run_ms": warm_ms[h],
                     "added_ms": load_run - warm_ms[h]})
    return {"heads": chosen, "repeats": sizes.lazy_repeats, "rows": rows,
            "added_ms_per_switch": float(np.mean([r["added_ms"] for r in rows])) if rows else None}


def _spread(items: list[str], k: int) -> list[str]:
    """k items spread evenly over the list (first and last included)."""
    if k >= len(items):
        return items
    idx = np.linspace(0, len(items) - 1, k).round().astype(int)
    return [items[i] for i in dict.fromkeys(idx.tolist())]


# --------------------------------------------------------------------------------------------
# 2. Pipelining with a real cloud
# --------------------------------------------------------------------------------------------


class Cloud:
    """`python -m cloud_runtime` on a free loopback port, in its own process group."""

    def __init__(self, bundle: Path, log: Path) -> None:
        self.log = log
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        env.pop("SPLITINFER_TOKEN", None)
        cmd = [sys.executable, "-m", "cloud_runtime", "--bundle", str(bundle), "--host",
               "127.0.0.1", "--port", str(self.port), "--workers", "1", "--log-level", "warning"]
        self.t0 = time.monotonic()
        self._log_file = log.open("wb")
        self.proc = subprocess.Popen(cmd, cwd=common.ROOT, env=env, stdout=self._log_file,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        self.ready_s: float | None = None

    def wait_ready(self, timeout_s: float = READY_TIMEOUT_S) -> float:
        """Seconds from start to /readyz 200; RuntimeError (with the log's tail) otherwise."""
        import requests

        with requests.Session() as s:
            while time.monotonic() - self.t0 < timeout_s:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"cloud exited ({self.proc.returncode}): {self._tail()}")
                try:
                    if s.get(self.url + "/readyz", timeout=2).status_code == 200:
                        self.ready_s = time.monotonic() - self.t0
                        return self.ready_s
                except requests.RequestException:
                    pass
                time.sleep(0.2)
        raise RuntimeError(f"cloud not ready after {timeout_s:.0f} s: {self._tail()}")

    def stop(self) -> None:
        """SIGTERM to the server's process group (master and its workers), SIGKILL if it hangs."""
        if self.proc.poll() is None:
            _signal_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                _signal_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log_file.close()

    def _tail(self) -> str:
        self._log_file.flush()
        return self.log.read_text(errors="replace")[-1500:]


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def gated(frames: list, answered: threading.Semaphore) -> Iterator:
    """Yield each frame only after the previous one was answered: no overlap at all."""
    for i, f in enumerate(frames):
        if i and not answered.acquire(timeout=120):
            raise RuntimeError("no answer for 120 s in the serial run")
        yield f


def pipeline_modes(split: str, bits: int) -> dict[str, tuple]:
    """name -> (EdgeConfig, serial?) for the three ways of running the same fixed split."""
    from edge_runtime.runner import EdgeConfig

    base = EdgeConfig(policy="fixed", split=split, bits=bits, device_class=DEVICE_CLASS)
    return {
        "serial": (replace(base, senders=1, pipeline_depth=1), True),
        "senders1_depth1": (replace(base, senders=1, pipeline_depth=1), False),
        "default": (base, False),
    }


def timed_run(rt, frames: list, serial: bool) -> dict:
    """One run of the runtime over `frames`: frames/s and what happened to them."""
    from edge_runtime.runner import summarize

    answered = threading.Semaphore(0)
    source = gated(frames, answered) if serial else frames
    t0 = time.perf_counter()
    results = rt.run(source, on_result=lambda r: answered.release())
    wall = time.perf_counter() - t0
    s = summarize(results, wall)
    return {"fps": s["throughput_fps"], "wall_s": s["wall_s"], "latency_ms_mean": s["latency_ms_mean"],
            "fallbacks": s["fallbacks"], "where": s["where"], "bytes_per_frame": s["bytes_per_frame"],
            "server_total_ms_mean": _server_mean(results, "total_ms"),
            "server_tail_ms_mean": _server_mean(results, "tail_ms")}


def _server_mean(results: list, key: str) -> float | None:
    """Mean of one of the server's own timings over the frames that went through the cloud."""
    values = [r.server[key] for r in results if key in r.server]
    return float(np.mean(values)) if values else None


def device_stage_ms(rt, config: dict, frames: np.ndarray, repeats: int) -> float:
    """Head + pack on this machine as the runtime does them, scaled to the device class (ms)."""
    from splitinfer import codec
    from splitinfer.bundle.profile import config_variant

    split = rt.manifest.split(config["split"])
    variant = config_variant(config)
    own = rt.allocations if variant == "allocated" else rt.calibration
    pack_kwargs = codec.variant_kwargs(variant, config["bits"], own.get(split.name))
    times = []
    for i in range(repeats + 2):
        t0 = time.perf_counter()
        act = rt.pool.run(split.name, frames[i % len(frames)])
        codec.pack(act, config["bits"], model_sha256=rt.manifest.model.sha256,
                   split_index=split.index, **pack_kwargs)
        times.append(time.perf_counter() - t0)
    return float(np.median(times[2:]) * 1e3 * max(rt.device_factor, 1.0))


def measure_pipelining(bundle: Path, cloud: Cloud, config: dict, frames_arr: np.ndarray,
                       sizes: Sizes) -> dict:
    """Frames/s per mode; rounds interleave the modes so the machine's load hits all alike."""
    from edge_runtime.runner import EdgeRuntime, Frame

    split, bits = config["split"], config["bits"]

    n = sizes.pipeline_frames
    frames = [Frame(i, frames_arr[i % len(frames_arr)]) for i in range(n)]
    warm = frames[: sizes.pipeline_warmup]
    modes = pipeline_modes(split, bits)
    runtimes = {name: EdgeRuntime(bundle, cloud.url, cfg) for name, (cfg, _) in modes.items()}
    runs: dict[str, list[dict]] = {name: [] for name in modes}
    try:
        for name, rt in runtimes.items():
            rt.run(warm)
        for _ in range(sizes.pipeline_rounds):
            for name, (_, serial) in modes.items():
                runs[name].append(timed_run(runtimes[name], frames, serial))
        first = next(iter(runtimes.values()))
        factor = first.device_factor
        device_ms = device_stage_ms(first, config, frames_arr, sizes.fallback_repeats)
    finally:
        for rt in runtimes.values():
            rt.close()
    fps = {name: float(np.median([r["fps"] for r in rs])) for name, rs in runs.items()}
    serial_ms = 1e3 / fps["serial"] if fps["serial"] else None
    return {
        "split": split, "bits": bits, "device_class": DEVICE_CLASS, "device_factor": factor,
        "frames": n, "rounds": sizes.pipeline_rounds,
        "configs": {name: {"senders": cfg.senders or cfg.pipeline_depth, "pipeline_depth": cfg.pipeline_depth,
                           "serial_gate": serial} for name, (cfg, serial) in modes.items()},
        "fps": fps,
        "runs": runs,
        "default_vs_serial": common.ratio(fps["default"], fps["serial"]),
        "default_vs_senders1_depth1": common.ratio(fps["default"], fps["senders1_depth1"]),
        "senders1_depth1_vs_serial": common.ratio(fps["senders1_depth1"], fps["serial"]),
        "fallbacks": sum(r["fallbacks"] for rs in runs.values() for r in rs),
        "serial_ms_per_frame": serial_ms,
        "device_stage_ms": device_ms,
        "device_stage_share": common.ratio(device_ms, serial_ms),
    }


# --------------------------------------------------------------------------------------------
# 3. Fallback
# --------------------------------------------------------------------------------------------


def measure_fallback(pool: HeadPool, split: str, frames: np.ndarray, device: dict | None,
                     repeats: int) -> dict:
    """full_ms vs head_ms at `split`, timed now (alternating, median) and from the device profile."""
    heads, full = [], []
    for i in range(repeats + 2):
        f = frames[i % len(frames)]
        t0 = time.perf_counter()
        pool.run(split, f)
        t1 = time.perf_counter()
        pool.run(FULL, f)
        t2 = time.perf_counter()
        if i >= 2:  # the first two are warm-up
            heads.append(t1 - t0)
            full.append(t2 - t1)
    head_now, full_now = float(np.median(heads) * 1e3), float(np.median(full) * 1e3)
    dev_head = (device or {}).get("heads_ms", {}).get(split)
    dev_full = (device or {}).get("full_ms")
    return {
        "split": split, "repeats": repeats,
        "strategy": "re-run the full model on the device from the frame (no TFLite tails)",
        "head_ms_this_run": head_now, "full_ms_this_run": full_now,
        "max_saving_share_this_run": common.ratio(head_now, full_now),
        "head_ms_device_profile": dev_head, "full_ms_device_profile": dev_full,
        "max_saving_share_device_profile": common.ratio(dev_head, dev_full),
        "note": "finishing from the activation would run a device tail (about full - head) "
                "instead of full, so it saves at most head_ms per failed frame; any device "
                "class scales both alike",
    }


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def print_report(sw: dict, lazy: dict, pipe: dict | None, fb: dict, fb_rows: list[dict],
                 goal_rows: list[dict]) -> None:
    common.print_table(
        f"Switching: {len(sw['heads'])} preloaded heads x {sw['frames_per_head']} frames, "
        f"median of {sw['rounds']} paired rounds",
        ["order", "switches", "ms / frame"],
        [["same head every frame (blocked)", sw["switches_blocked"], sw["same_head_ms_per_frame"]],
         ["alternating every frame", sw["switches_round_robin"], sw["alternating_ms_per_frame"]],
         ["added per switch (preloaded)", "", sw["added_ms_per_switch"]],
         ["added per switch (lazy load)", "", lazy["added_ms_per_switch"]]], digits=4)
    common.print_table("Lazy switch: load + allocate + first run vs a warm run",
                       ["split", "load+run ms", "warm ms", "added ms"],
                       [[r["split"], r["load_and_run_ms"], r["warm_run_ms"], r["added_ms"]]
                        for r in lazy["rows"]], digits=3)
    if pipe is not None:
        rows = [[name, c["senders"], c["pipeline_depth"], "yes" if c["serial_gate"] else "no",
                 pipe["fps"][name], _spread_text(pipe["runs"][name]),
                 _median(pipe["runs"][name], "latency_ms_mean"),
                 _median(pipe["runs"][name], "server_total_ms_mean")]
                for name, c in pipe["configs"].items()]
        common.print_table(
            f"Pipelining: fixed {pipe['split']} @ {pipe['bits']} bits, device {pipe['device_class']} "
            f"(x{pipe['device_factor']:.2f}), {pipe['frames']} frames, median of {pipe['rounds']}",
            ["mode", "senders", "depth", "wait for answer", "frames/s", "min-max", "latency ms",
             "server ms"],
            rows)
        print(f"default / serial = {common.fmt(pipe['default_vs_serial'])}x, default / "
              f"senders1-depth1 = {common.fmt(pipe['default_vs_senders1_depth1'])}x, "
              f"senders1-depth1 / serial = {common.fmt(pipe['senders1_depth1_vs_serial'])}x; "
              f"fallbacks {pipe['fallbacks']}")
        print(f"device stage (head + pack, x{pipe['device_factor']:.2f}, timed after the runs): "
              f"{common.fmt(pipe['device_stage_ms'])} ms, "
              f"{common.fmt(_percent(pipe['device_stage_share']), 0)} % of a "
              f"{common.fmt(pipe['serial_ms_per_frame'])} ms serial frame")
    common.print_table(
        f"Fallback at the median split {fb['split']}: full model from the frame vs head spent",
        ["source", "head ms", "full ms", "head / full"],
        [["this run", fb["head_ms_this_run"], fb["full_ms_this_run"], fb["max_saving_share_this_run"]],
         ["device profile", fb["head_ms_device_profile"], fb["full_ms_device_profile"],
          fb["max_saving_share_device_profile"]]], digits=3)
    if fb_rows:
        common.print_table("Per split (device profile): the most a resume from the activation saves",
                           ["split", "head ms", "full ms", "head / full"],
                           [[r["split"], r["head_ms"], r["full_ms"], r["max_saving_share"]]
                            for r in fb_rows], digits=3)
    common.print_goals(goal_rows)


def _percent(share: float | None) -> float | None:
    return None if share is None else 100 * share


def _spread_text(runs: list[dict]) -> str:
    fps = [r["fps"] for r in runs]
    return f"{min(fps):.1f}-{max(fps):.1f}"


def _median(runs: list[dict], key: str) -> float | None:
    values = [r[key] for r in runs if r.get(key) is not None]
    return float(np.median(values)) if values else None


# --------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.edge_switch",
                                description=__doc__.splitlines()[0])
    p.add_argument("--bundle", type=Path, default=common.DEFAULT_BUNDLE)
    p.add_argument("--data", type=Path, help="images (default: the default model's scenes, else "
                   "uniform noise, which is fine for timing)")
    p.add_argument("--max-drop-pp", type=float, default=1.0)
    p.add_argument("--threads", type=int, help="LiteRT threads (default: the device profile's)")
    p.add_argument("--no-cloud", action="store_true", help="skip the pipelining measurement")
    p.add_argument("--quick", action="store_true",
                   help="a few seconds of measuring (the cloud start-up overlaps the device "
                        "measurements, so those are noisier)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    t0 = time.perf_counter()
    problem = common.check_bundle(args.bundle)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    sizes = QUICK if args.quick else Sizes()
    cloud: Cloud | None = None
    tmp = tempfile.TemporaryDirectory(prefix="edge_switch-")
    try:
        manifest = load_manifest(args.bundle)
        profile = common.read_json(args.bundle / "profile.json")
        device = common.read_json(args.bundle / "device-this-machine.json")
        threads = args.threads or (device or {}).get("num_threads") or default_num_threads()
        order = [s.name for s in manifest.splits if s.head]
        mid = median_split(order)
        config, config_why = pick_config(profile["configs"], mid, args.max_drop_pp)
        frames, source = common.load_frames(manifest.model.name, manifest.model.input_shape,
                                            args.data, 16 if args.quick else 32, allow_random=True)
        if not args.no_cloud:
            cloud = Cloud(args.bundle, Path(tmp.name) / "cloud.log")
            if not args.quick:  # quiet machine for the device timings
                cloud.wait_ready()
        with HeadPool(args.bundle, manifest, num_threads=threads) as pool:
            sw = measure_switching(pool, frames, sizes)
            lazy = measure_lazy(args.bundle, manifest, pool.loaded, frames, sw["warm_head_ms"],
                                threads, sizes)
            fb = measure_fallback(pool, mid, frames, device, sizes.fallback_repeats)
        pipe = None
        if cloud is not None:
            cloud.wait_ready()
            pipe = measure_pipelining(args.bundle, cloud, config, frames, sizes)
            pipe["bits_choice"] = config_why
            pipe["cloud_ready_s"] = cloud.ready_s
    except (BundleError, ValueError, OSError, KeyError, RuntimeError) as e:
        return common.fail(str(e).splitlines()[0])
    finally:
        if cloud is not None:
            cloud.stop()
        tmp.cleanup()
    fb_rows = fallback_rows(device, order)
    goal_rows = [common.goal("added cost per head switch (preloaded)", sw["added_ms_per_switch"],
                             "<", GOAL_SWITCH_MS, " ms")]
    print(f"bundle {args.bundle} ({manifest.model.name}), frames: {source}, LiteRT threads {threads}")
    print_report(sw, lazy, pipe, fb, fb_rows, goal_rows)
    elapsed = time.perf_counter() - t0
    common.write_results(args.out, {
        "benchmark": "edge_switch",
        "bundle": str(args.bundle),
        "model": manifest.model.name,
        "model_sha256": manifest.model.sha256,
        "quick": args.quick,
        "frames_source": source,
        "num_threads": threads,
        "switching": sw,
        "lazy_load": lazy,
        "pipelining": pipe,
        "fallback": {**fb, "per_split": fb_rows},
        "goals": goal_rows,
        "elapsed_s": round(elapsed, 2),
    })
    print(f"\nwrote {args.out} in {elapsed:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
