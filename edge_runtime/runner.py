"""The frame loop: decide, run the head, pack, upload, and never lose a frame.

Pipelined in two stages: the main thread runs heads (one board, so all device compute holds one
lock), sender threads upload; a bounded queue between them applies back-pressure. A frame whose
upload fails (unreachable, 5xx, timeout, refused) is finished on the device with the full model
from the frame it still holds, and the scheduler falls back to device-only and probes the cloud
with back-off. Every frame is answered exactly once: the result table is keyed by frame number
and a second answer for a frame is an error.
"""
from __future__ import annotations

import math
import os
import queue
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from edge_runtime.heads import FULL, HeadPool, useful_heads
from edge_runtime.images import encode_jpeg
from edge_runtime.uplink import CloudAnswer, CloudClient, CloudError
from splitinfer import codec
from splitinfer import protocol as P
from splitinfer.bundle.calibration import load_calibration
from splitinfer.bundle.manifest import INPUT_SPLIT, BundleError, load_manifest
from splitinfer.bundle.profile import PROFILE_FILE, load_profile
from splitinfer.encoding import Encoding

POLICIES = ("auto", "device", "cloud", "fixed")


@dataclass(frozen=True)
class EdgeConfig:
    """How the edge runs; None means infer (see each field)."""

    policy: str = "auto"
    split: str | None = None  # for policy=fixed
    bits: int | None = None  # for policy=fixed
    objective: str = "throughput"
    slo_ms: float | None = None
    max_drop_pp: float = 1.0
    drop_estimate: str = "upper"  # which profiled drop max_drop_pp bounds: "upper" or "point"
    device_class: str | None = None  # pad head times to this board's speed (scheduler.devices)
    num_threads: int | None = None  # LiteRT threads (None: all cores)
    max_heads: int | None = None
    pipeline_depth: int = 4  # offloaded frames in flight (queued for a sender, or being sent)
    # uploads at once (None: pipeline_depth, as the simulator models it: with 2 senders and 4
    # in flight, cloud-only frames on a 40 ms link ran 240 ms live against 108 simulated)
    senders: int | None = None
    token: str | None = None
    ca_cert: str | None = None  # PEM of a private CA for an https cloud (None: system store)
    camera_fps: float | None = None  # frame source rate (None: as fast as the pipeline goes)
    jpeg_quality: int = 90

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"Expected one of {POLICIES}. Received: policy={self.policy!r}")
        if self.policy == "fixed" and (self.split is None or self.bits is None):
            raise ValueError("policy=fixed needs --split NAME and --bits N.")
        if self.bits is not None:
            Encoding.of(self.bits)  # ValueError names the encodings there are
        if self.pipeline_depth < 1 or (self.senders is not None and self.senders < 1):
            raise ValueError("pipeline_depth and senders must be >= 1.")


@dataclass(frozen=True)
class Frame:
    index: int
    image: np.ndarray
    label: int | None = None
    name: str | None = None


@dataclass
class FrameResult:
    frame: int
    split: str
    bits: int | None
    bytes: int
    latency_ms: float
    top1: int
    where: str  # device | cloud | split
    fallback: bool
    label: int | None = None
    name: str | None = None
    reason: str = ""
    t_s: float = 0.0  # completion time since the run started
    server: dict[str, float] = field(default_factory=dict)

    @property
    def encoding(self) -> Encoding:
        return Encoding.of(self.bits, self.split)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["encoding"] = self.encoding.label
        d["correct"] = None if self.label is None else bool(self.top1 == self.label)
        return d


class DuplicateAnswerError(RuntimeError):
    pass


class EdgeRuntime:
    """Owns the heads, the HTTP client and the scheduler for one bundle and one cloud."""

    def __init__(self, bundle: str | Path, cloud_url: str | None, config: EdgeConfig = EdgeConfig(),
                 *, before_send: Callable[[int, float], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from edge_runtime.policy import (
            build_scheduler,  # pure Python + numpy: fine on a board
        )

        self.bundle = Path(bundle)
        self.config = config
        self.clock = clock
        self.manifest = load_manifest(self.bundle)
        profile_file = self.bundle / PROFILE_FILE
        self.profile = load_profile(profile_file, config.drop_estimate) if profile_file.is_file() else None
        self.calibration = load_calibration(self.bundle, self.manifest)
        self.allocations = load_calibration(self.bundle, self.manifest, kind="allocated")
        # (split, bits) -> the variant the profiler measured: how the edge packs that config
        self._params = {(c.split, c.bits): c.variant for c in (self.profile.configs if self.profile else ())}
        unallocated = sorted({s for (s, _), p in self._params.items() if p == "allocated"} - set(self.allocations))
        if unallocated:
            raise BundleError(f"{self.bundle / 'profile.json'} has per-channel (bits 1) configurations for "
                              f"{unallocated} but calibration.json has no allocation for them; rerun "
                              "python -m converter.profile")
        if config.policy != "device" and cloud_url is None:
            raise ValueError(f"policy={config.policy} needs --cloud URL.")
        if config.policy == "fixed":
            self.manifest.split(config.split)  # KeyError names the valid splits
        heads = self._heads_needed()
        self.pool = HeadPool(self.bundle, self.manifest, heads, num_threads=config.num_threads,
                             max_heads=config.max_heads,
                             priority=useful_heads(self.manifest, self.profile, config.max_drop_pp))
        self.scheduler, (self.device_factor, self.serial_factor), self._board_head_ms = \
            build_scheduler(self.bundle, config, self.pool.dropped)
        # A second interpreter of the full model for finishing frames from the sender threads.
        self.fallback_pool = HeadPool(self.bundle, self.manifest, [], num_threads=config.num_threads)
        self.client = None
        if cloud_url is not None and config.policy != "device":  # device-only never probes
            self.client = CloudClient(cloud_url, token=config.token, model=self.manifest.model.name,
                                      model_sha256=self.manifest.model.sha256, before_send=before_send,
                                      ca_cert=config.ca_cert)
        self._device_lock = threading.Lock()
        self._sched_lock = threading.Lock()
        self._results: dict[int, FrameResult] = {}
        self._results_lock = threading.Lock()
        self.events: list[dict[str, Any]] = []

    # ------------------------------------------------------------------ public

    @property
    def runtime_info(self) -> dict[str, Any]:
        info = self.pool.info
        return {"runtime": info.package, "delegate": info.delegate, "num_threads": info.num_threads,
                "heads_loaded": len(self.pool.loaded), "heads_dropped": self.pool.dropped,
                "device_class": self.config.device_class or "this-machine",
                "device_factor": self.device_factor, "serial_factor": self.serial_factor}

    def run(self, frames: Iterable[Frame], on_result: Callable[[FrameResult], None] | None = None) -> list[FrameResult]:
        """Process every frame; returns the results in frame order (each frame exactly once)."""
        self._results.clear()
        self._on_result = on_result
        self._t0 = self.clock()
        # The in-flight limit is a slot per offloaded frame, held from the hand-over to the
        # answer, as the simulator counts it. A bounded queue in front of the senders let a
        # frame wait in it on top of one with each sender: 8 in flight for a depth of 4, and
        # live cloud-only ran 1.16x the simulator's frames at twice its latency. Probes take no
        # slot.
        self._slots = threading.BoundedSemaphore(self.config.pipeline_depth)
        jobs: queue.Queue = queue.Queue()
        senders = [threading.Thread(target=self._sender, args=(jobs,), daemon=True, name=f"sender-{i}")
                   for i in range((self.config.senders or self.config.pipeline_depth) if self.client else 0)]
        self._last_ping, self._pinging = -float("inf"), False
        if self.client is not None:
            self._maybe_ping(wait=True)  # the first RTT before the first frame
        for t in senders:
            t.start()
        expected = 0
        try:
            for frame in frames:
                expected += 1
                self._process(frame, jobs)
        finally:
            for _ in senders:
                jobs.put(None)
            for t in senders:
                t.join()
        missing = expected - len(self._results)
        if missing:
            raise RuntimeError(f"{missing} frames have no answer: this is a bug, please report it.")
        return [self._results[i] for i in sorted(self._results)]

    def infer(self, image: np.ndarray) -> FrameResult:
        """One image through the whole pipeline, as the policy decides; `.top1` is the class.

        For streams, `run` keeps frames in flight and is much faster per frame."""
        return self.run([Frame(0, np.asarray(image, dtype=np.float32))])[0]

    def close(self) -> None:
        if self.client:
            self.client.close()
        self.pool.close()
        self.fallback_pool.close()

    def __enter__(self) -> "EdgeRuntime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------ stages

    def _process(self, frame: Frame, jobs: queue.Queue) -> None:
        if self.config.camera_fps:
            due = self._t0 + frame.index / self.config.camera_fps
            delay = due - self.clock()
            if delay > 0:
                time.sleep(delay)
        start = self.clock()
        with self._sched_lock:
            probe = 0
            if self.client is not None and self.scheduler.probe_due(start):
                self.scheduler.probe_started(start)
                probe = self.scheduler.probe_bytes()
            d = self.scheduler.decide(start)
        if probe:
            # Incompressible bytes, so no link or proxy compression flatters the sample.
            jobs.put(("probe", frame, os.urandom(probe), None, start))
        where = d.where.value
        if where == "device" or self.client is None:
            probs, ms = self._device_run(self.pool, FULL, frame.image)
            with self._sched_lock:
                self.scheduler.observe_device(FULL, ms)
            self._answer(FrameResult(frame.index, FULL, None, 0, self._ms_since(start), int(np.argmax(probs)),
                                     "device", bool(d.fallback), frame.label, frame.name, d.reason))
            return
        if where == "cloud":
            t0 = self.clock()
            payload = encode_jpeg(frame.image, self.config.jpeg_quality)
            ms = self._pad_packing((self.clock() - t0) * 1e3, d.index)
            self._enqueue(jobs, ("image", frame, payload, d, start))
            return
        act, head_ms = self._device_run(self.pool, d.split, frame.image)
        t0 = self.clock()
        split = self.manifest.split(d.split)
        params = self._params.get((d.split, d.bits), "frame")
        own = (self.allocations if params == "allocated" else self.calibration).get(d.split)
        variant = codec.variant_kwargs(params, d.bits, own)
        # The split by index only: with the model hash it is unambiguous, and a long layer name
        # would be a tenth of a late split's payload.
        payload = codec.pack(act, d.bits, model_sha256=self.manifest.model.sha256,
                               split_index=split.index, **variant)
        pack_ms = self._pad_packing((self.clock() - t0) * 1e3, d.index)
        with self._sched_lock:
            self.scheduler.observe_device(d.split, head_ms + pack_ms)
        self._enqueue(jobs, ("activation", frame, payload, d, start))

    def _enqueue(self, jobs: queue.Queue, job: tuple) -> None:
        """Hand an upload to the senders. While every in-flight slot stays taken for longer than
        a local run takes (the link stalls), finish the frame on the device instead: the board
        then loses at most that time to a stall, as the simulator models it."""
        with self._sched_lock:
            budget = self.scheduler.slot_wait_budget_s()
        if self._slots.acquire(timeout=budget if math.isfinite(budget) else None):
            jobs.put(job)
        else:
            _, frame, _, decision, start = job
            with self._sched_lock:
                self.scheduler.observe_abandoned()
            self._finish_on_device(frame, decision, start, 0,
                                   f"no upload slot within {budget * 1e3:.0f} ms", fallback=False)

    def _sender(self, jobs: queue.Queue) -> None:
        while True:
            job = jobs.get()
            if job is None:
                return
            try:
                self._send_job(*job)
            finally:
                if job[0] != "probe":
                    self._slots.release()

    def _send_job(self, kind: str, frame: Frame, payload: bytes, decision, start: float) -> None:
        """Upload one job and answer its frame: from the cloud, or on the device on failure."""
        self._maybe_ping()
        now = self.clock()
        with self._sched_lock:
            cloud_down = not self.scheduler.cloud_ok
            if cloud_down and kind != "probe":
                self.scheduler.observe_abandoned()
            timeout = self._timeout_s(len(payload), start)
        if cloud_down and kind != "probe":
            # Queued before the cloud failed: each would wait out its own timeout to learn
            # what the scheduler already knows. Probes still go; they find the way back.
            self._finish_on_device(frame, decision, start, 0, "cloud down while queued")
            return
        try:
            answer = self._send(kind, payload, timeout)
        except CloudError as e:
            self._on_cloud_error(e, kind, frame, decision, start, len(payload), now)
            return
        except Exception as e:  # a sender must never die: its frame would be lost
            self._on_cloud_error(CloudError("unreachable", f"upload failed: {type(e).__name__}: {e}"),
                                 kind, frame, decision, start, len(payload), now)
            return
        self._observe_answer(kind, answer, len(payload))
        if kind == "probe":
            return
        where = "cloud" if kind == "image" else "split"
        self._answer(FrameResult(
            frame.index, decision.split if kind == "activation" else INPUT_SPLIT,
            decision.bits if kind == "activation" else None, len(payload),
            self._ms_since(start), answer.top1, where, False, frame.label, frame.name,
            decision.reason, server=answer.server))

    def _send(self, kind: str, payload: bytes, timeout: float) -> CloudAnswer:
        if kind == "activation":
            return self.client.infer(payload, timeout)
        if kind == "probe":
            return self.client.probe(payload, timeout)
        return self.client.infer_image(payload, timeout)

    def _on_cloud_error(self, e: CloudError, kind, frame, decision, start, nbytes, now) -> None:
        with self._sched_lock:
            self.scheduler.observe_failure(self.clock(), probe=kind == "probe")
        self.events.append({"t_s": round(now - self._t0, 3), "event": "cloud_error",
                            "kind": e.kind, "frame": frame.index, "error": str(e)})
        if kind != "probe":
            self._finish_on_device(frame, decision, start, nbytes, str(e))

    def _maybe_ping(self, every_s: float = 2.0, *, wait: bool = False) -> None:
        """Keep the RTT known (the bandwidth estimate subtracts it from each upload).

        Senders ping on a side thread: a ping into a link that just died waits out its whole
        timeout, and the frame a sender holds must not wait with it (that cost one frame 1 s
        against a 500 ms SLO in benchmarks.faults)."""
        now = self.clock()
        with self._sched_lock:
            if now - self._last_ping < every_s or not self.scheduler.cloud_ok or self._pinging:
                return
            self._last_ping, self._pinging = now, True
        if wait:
            self._ping()
        else:
            threading.Thread(target=self._ping, daemon=True, name="ping").start()

    def _ping(self) -> None:
        try:
            rtt_ms = self.client.ping(timeout_s=1.0)
        except Exception:  # noqa: BLE001 - uploads and probes decide about failures, not pings
            rtt_ms = None
        with self._sched_lock:
            self._pinging = False
            if rtt_ms is not None:
                self.scheduler.observe_rtt(self.clock(), rtt_ms)

    def _finish_on_device(self, frame: Frame, decision, start: float, nbytes: int, why: str,
                          fallback: bool = True) -> None:
        probs, ms = self._device_run(self.fallback_pool, FULL, frame.image)
        self._answer(FrameResult(frame.index, FULL, None, nbytes, self._ms_since(start),
                                 int(np.argmax(probs)), "device", fallback, frame.label, frame.name,
                                 f"fallback: {why}" if fallback else f"relief: {why}"))

    def _observe_answer(self, kind: str, answer: CloudAnswer, nbytes: int) -> None:
        now = self.clock()
        with self._sched_lock:
            self.scheduler.observe_upload(now, nbytes, answer.network_s, probe=kind == "probe",
                                          sent_s=now - answer.elapsed_s)
            self.scheduler.observe_success(now)
            if kind != "probe":
                self.scheduler.observe_cloud(answer.split or INPUT_SPLIT, answer.server.get(P.TAIL_MS, 0.0),
                                             answer.server.get(P.QUEUE_MS, 0.0))
                if "utilisation" in answer.load:
                    self.scheduler.observe_cloud_load(answer.load["utilisation"])

    # ------------------------------------------------------------------ helpers

    def _device_run(self, pool: HeadPool, split: str, image: np.ndarray) -> tuple[np.ndarray, float]:
        """Run on the (one) board; with a device class, pad to that board's speed.

        The board's time for a head is the device profile's time for it on this machine times
        the class factor; the run is padded up to that. Multiplying each run's own time instead
        would amplify this host's jitter (another process, a GC pause) by the factor, 8.5x for
        rpi4. A run slower than the board's time keeps its measured time."""
        with self._device_lock:
            t0 = self.clock()
            out = pool.run(split, image)
            measured = (self.clock() - t0) * 1e3
            board = self._board_head_ms.get(split)
            if board is None:
                return out, self._pad(measured)
            if board > measured:
                time.sleep((board - measured) / 1e3)
            return out, max(board, measured)

    def _pad_packing(self, measured_ms: float, index: int) -> float:
        """Pad packing (or JPEG encoding) to the board's time for the configuration decided
        (`index` in the scheduler's table): the profile's time on this machine times the
        single-thread factor, as for heads. Scaling this run's own time instead multiplied
        whatever slowed it here (the senders' threads, a cloud on the same cores) by the factor:
        live dyno on pi-zero2 ran device-bound at 0.70-0.80 of the simulator."""
        if not self._board_head_ms:  # the real board, or no measured device profile
            return self._pad(measured_ms, self.serial_factor)
        board = self.scheduler.table.configs[index].pack_ms  # the table never changes
        if board > measured_ms:
            time.sleep((board - measured_ms) / 1e3)
        return max(board, measured_ms)

    def _pad(self, measured_ms: float, factor: float | None = None) -> float:
        """Sleep so a run measured here takes as long as on the board (`factor`: the head
        factor by default, the single-thread one for packing and JPEG encoding)."""
        factor = self.device_factor if factor is None else factor
        extra = measured_ms * (factor - 1.0)
        if extra > 0:
            time.sleep(extra / 1e3)
        return measured_ms * max(factor, 1.0)

    def _timeout_s(self, nbytes: int, start: float) -> float:
        """Bounded by the latency SLO: leave time to finish the frame on the device."""
        timeout = self.scheduler.upload_timeout_s(nbytes)
        if self.config.slo_ms:
            full_ms = self.scheduler.table.configs[self.scheduler.table.full_index].head_ms
            left = self.config.slo_ms / 1e3 - (self.clock() - start) - full_ms / 1e3
            timeout = min(timeout, max(left, 0.25))
        return timeout

    def _answer(self, result: FrameResult) -> None:
        result.t_s = round(self.clock() - self._t0, 4)
        result.latency_ms = round(result.latency_ms, 3)
        with self._results_lock:
            if result.frame in self._results:
                raise DuplicateAnswerError(f"frame {result.frame} answered twice")
            self._results[result.frame] = result
            if self._on_result is not None:
                self._on_result(result)

    def _ms_since(self, start: float) -> float:
        return (self.clock() - start) * 1e3

    def _heads_needed(self) -> list[str] | None:
        if self.config.policy in ("device", "cloud"):
            return []
        if self.config.policy == "fixed":
            return [] if self.config.split == INPUT_SPLIT else [self.config.split]
        return None  # auto: every head


def summarize(results: list[FrameResult], wall_s: float) -> dict[str, Any]:
    lat = np.array([r.latency_ms for r in results]) if results else np.zeros(1)
    labelled = [r for r in results if r.label is not None]
    where = {w: sum(1 for r in results if r.where == w) for w in ("device", "split", "cloud")}
    switches = sum(1 for a, b in zip(results, results[1:]) if (a.split, a.bits) != (b.split, b.bits)
                   and a.where != "device" and b.where != "device")
    return {
        "summary": True,
        "frames": len(results),
        "wall_s": round(wall_s, 3),
        "throughput_fps": round(len(results) / wall_s, 3) if wall_s > 0 else None,
        "latency_ms_mean": round(float(lat.mean()), 3),
        "latency_ms_p95": round(float(np.percentile(lat, 95)), 3),
        "bytes_per_frame": round(float(np.mean([r.bytes for r in results])) if results else 0.0, 1),
        "accuracy": round(float(np.mean([r.top1 == r.label for r in labelled])), 4) if labelled else None,
        "fallbacks": sum(1 for r in results if r.fallback),
        "where": where,
        "switches": switches,
    }
