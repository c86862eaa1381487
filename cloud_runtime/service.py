"""One worker's inference state: the backend, one batcher per tail, readiness and load times.

Framework-free (no Flask, no TensorFlow): the views call `infer`; the backend starts and, in
eager mode, loads every tail on a background thread, so the worker answers /healthz and /readyz
while TensorFlow imports, and gunicorn's worker timeout never sees a long start.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from cloud_runtime.backend import RemoteRun, TailBackend, TailSpec
from cloud_runtime.batcher import (
    Batched,
    Batcher,
    BatcherClosed,
    BatchPolicy,
    QueueFull,
    WaitTimeout,
)
from cloud_runtime.buckets import assemble, bucket_for, bucket_sizes, unpad
from cloud_runtime.config import ServerConfig
from cloud_runtime.errors import NotReady, Overloaded, TailFailed
from cloud_runtime.load import LoadMeter, LoadReport
from cloud_runtime.metrics import ServerMetrics
from cloud_runtime.registry import ModelRegistry

log = logging.getLogger("cloud_runtime")
SEEN_BATCHES = 4096  # remote batch ids remembered, so each batch is counted once in /metrics


@dataclass
class LoadRecord:
    load_ms: float
    warmup_ms: float
    lazy: bool


class InferenceService:
    def __init__(self, registry: ModelRegistry, backend: TailBackend, config: ServerConfig,
                 metrics: ServerMetrics):
        self.registry = registry
        self.backend = backend
        self.config = config
        self.metrics = metrics
        self.buckets = bucket_sizes(config.max_batch)
        self._policy = BatchPolicy(config.max_batch, config.max_delay_s, config.max_queue,
                                   early=config.early_dispatch)
        self._tails = {t.key: t for t in registry.tails()}
        self.load = LoadMeter(config.max_batch)
        self._batchers: dict[str, Batcher] = {}
        self._in_flight: dict[str, int] = {}  # per tail, where the backend batches itself
        self._seen_batches: OrderedDict[str, None] = OrderedDict()
        self._remote_load: LoadReport | None = None
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._error: str | None = None
        self._started_at = time.monotonic()
        self._ready_after_s: float | None = None
        self._backend_start_s: float | None = None
        self.loads: dict[str, LoadRecord] = {}
        self._closed = False
        self._loader: threading.Thread | None = None
        metrics.watch_ready(self.is_ready)
        metrics.watch_queues(self._queue_depths)

    # ---- lifecycle ------------------------------------------------------------------------

    def start(self, *, background: bool = True) -> None:
        """Start the backend (and load every tail in eager mode); readiness flips when done."""
        if background:
            self._loader = threading.Thread(target=self._start, name="tail-loader", daemon=True)
            self._loader.start()
        else:
            self._start()

    def _start(self) -> None:
        try:
            t0 = time.monotonic()
            self.backend.start()
            self._backend_start_s = time.monotonic() - t0
            if self.config.load == "eager":
                log.info("backend %s (%s) started on %s in %.2f s; loading %d tails",
                         self.backend.name, self.backend.chosen_because, self.backend.device,
                         self._backend_start_s, len(self._tails))
                for tail in self._tails.values():
                    if self._closed:  # stopping: leave TensorFlow alone (see `busy`)
                        return
                    self._load(tail, lazy=False)
            self._ready_after_s = time.monotonic() - self._started_at
            self._ready.set()
            log.info("worker ready in %.2f s on %s (%s load, %d tails)", self._ready_after_s,
                     self.backend.device, self.config.load, len(self.loads))
        except Exception as e:  # reported by /readyz; the worker keeps answering
            self._error = f"{type(e).__name__}: {e}"
            log.exception("backend failed to start")

    def wait_ready(self, timeout_s: float) -> bool:
        return self._ready.wait(timeout_s)

    def is_ready(self) -> bool:
        return self._ready.is_set() and not self._closed

    def busy(self, timeout_s: float = 0.0) -> bool:
        """Whether the loader thread is still inside TensorFlow after `timeout_s`.

        A process that exits while a thread runs TensorFlow's native code aborts ("terminate
        called after throwing an instance of ''", SIGABRT): the worker then exits at once.
        """
        loader = self._loader
        if loader is None:
            return False
        loader.join(timeout_s)
        return loader.is_alive()

    def close(self) -> None:
        self._closed = True
        with self._lock:
            batchers = list(self._batchers.values())
        for b in batchers:
            b.close()
        self.backend.close()

    def status(self) -> dict:
        """What /readyz reports."""
        return {
            "ready": self.is_ready(),
            "load": self.config.load,
            "device": self.backend.device,
            "backend": self.backend.name,
            "engine": self.backend.engine,
            "tails_loaded": len(self.loads),
            "tails_total": len(self._tails),
            "backend_start_ms": _ms(self._backend_start_s),
            "ready_after_ms": _ms(self._ready_after_s),
            "start_error": self._error,
            "current_load": self.load_report().as_json(),
            "loads": {k: {"load_ms": round(r.load_ms, 2), "warmup_ms": round(r.warmup_ms, 2),
                          "lazy": r.lazy} for k, r in self.loads.items()},
        }

    # ---- inference ------------------------------------------------------------------------

    def infer(self, tail: TailSpec, decode: Callable[[], np.ndarray]) -> tuple[Batched[np.ndarray], float]:
        """Decode one input and run it through its tail, batched with concurrent requests.

        The batcher hears of the request before `decode` runs, so it can wait for it rather
        than start a batch without it. Returns the result and the decode time in seconds.
        """
        retry = self.config.retry_after_s
        if not self.is_ready():
            why = self._error or "tails are still loading"
            raise NotReady(f"worker not ready: {why}; retry shortly or check GET /readyz", retry)
        if self.backend.batches_itself:
            return self._infer_remote(tail, decode)
        batcher = self._batcher(tail)
        try:
            batcher.announce()
        except QueueFull as e:
            raise Overloaded(f"overloaded: {e} for {tail.key}; retry after {retry} s", retry) from None
        except BatcherClosed as e:
            raise NotReady(str(e), retry) from None
        self.load.admitted()
        try:
            result, decode_s = self._decode_and_run(batcher, decode, tail)
        finally:
            self.load.answered()
        self.load.waited(result.queue_s)
        return result, decode_s

    def load_report(self) -> LoadReport:
        """This worker's load; where replicas batch, the last replica's, with the requests this
        worker has in flight (which cover every replica)."""
        own = self.load.report()
        remote = self._remote_load
        return own if remote is None else dataclasses.replace(remote, in_flight=own.in_flight)

    def _infer_remote(self, tail: TailSpec, decode: Callable[[], np.ndarray]
                      ) -> tuple[Batched[np.ndarray], float]:
        """Decode here, batch in the backend's replicas; `max_queue` bounds each tail's requests
        in flight from this worker, like the batcher's queue."""
        retry = self.config.retry_after_s
        with self._lock:
            n = self._in_flight.get(tail.key, 0)
            if n >= self.config.max_queue + self.config.max_batch:
                raise Overloaded(f"overloaded: {n} requests in flight for {tail.key}; retry after "
                                 f"{retry} s", retry)
            self._in_flight[tail.key] = n + 1
        self.load.admitted()
        try:
            t0 = time.perf_counter()
            x = decode()
            decode_s = time.perf_counter() - t0
            try:
                ran = self.backend.run_one(tail, x, self.config.request_timeout_s)
            except TimeoutError:
                raise Overloaded(f"overloaded: no answer for {tail.key} within "
                                 f"{self.config.request_timeout_s:g} s; retry after {retry} s", retry) from None
            except Exception as e:
                raise _tail_failed(tail, e) from None
        finally:
            self.load.answered()
            with self._lock:
                self._in_flight[tail.key] -= 1
        self._count_remote(tail, ran)
        return Batched(ran.value, ran.queue_s, ran.run_s, ran.batch_size, ran.replica), decode_s

    def _count_remote(self, tail: TailSpec, ran: RemoteRun) -> None:
        self.load.waited(ran.queue_s)
        if ran.load is not None:
            self._remote_load = ran.load
        with self._lock:
            if ran.batch_id in self._seen_batches:
                return
            self._seen_batches[ran.batch_id] = None
            if len(self._seen_batches) > SEEN_BATCHES:
                self._seen_batches.popitem(last=False)
        self.metrics.observe_batch(tail.model, tail.split, ran.batch_size, ran.run_s)

    def _decode_and_run(self, batcher: Batcher, decode: Callable[[], np.ndarray], tail: TailSpec
                        ) -> tuple[Batched[np.ndarray], float]:
        retry = self.config.retry_after_s
        t0 = time.perf_counter()
        try:
            x = decode()
        except BaseException:
            batcher.withdraw()
            raise
        decode_s = time.perf_counter() - t0
        try:
            return batcher.run(x, self.config.request_timeout_s, announced=True), decode_s
        except QueueFull as e:
            raise Overloaded(f"overloaded: {e} for {tail.key}; retry after {retry} s", retry) from None
        except WaitTimeout as e:
            raise Overloaded(f"overloaded: {e} for {tail.key}; retry after {retry} s", retry) from None
        except BatcherClosed as e:
            raise NotReady(str(e), retry) from None
        except Exception as e:
            raise _tail_failed(tail, e) from None

    def _batcher(self, tail: TailSpec) -> Batcher:
        with self._lock:
            b = self._batchers.get(tail.key)
            if b is None:
                def on_batch(size: int, seconds: float, tail=tail) -> None:
                    self.metrics.observe_batch(tail.model, tail.split, size, seconds)
                    self.load.batch(size, seconds)

                b = Batcher(lambda xs, tail=tail: self._run_batch(tail, xs), self._policy,
                            name=f"batcher-{tail.key}", on_batch=on_batch)
                self._batchers[tail.key] = b
            return b

    def _run_batch(self, tail: TailSpec, xs: list[np.ndarray]) -> list[np.ndarray]:
        if not self.backend.is_loaded(tail):
            self._load(tail, lazy=True)
        bucket = bucket_for(len(xs), self.buckets)
        out = self.backend.run(tail, assemble(xs, bucket))
        return unpad(out, bucket, len(xs))

    def _load(self, tail: TailSpec, *, lazy: bool) -> None:
        timing = self.backend.load(tail)
        if timing.load_s or timing.warmup_s or tail.key not in self.loads:
            self.loads[tail.key] = LoadRecord(1e3 * timing.load_s, 1e3 * timing.warmup_s, lazy)
            log.info("loaded tail %s in %.0f ms (+%.0f ms first call)%s", tail.key,
                     1e3 * timing.load_s, 1e3 * timing.warmup_s, " on first request" if lazy else "")

    def _queue_depths(self):
        with self._lock:
            depths = {k: float(b.depth) for k, b in self._batchers.items()}
            depths.update({k: float(n) for k, n in self._in_flight.items()})
        for key, depth in depths.items():
            t = self._tails[key]
            yield (t.model, t.split), depth


def _tail_failed(tail: TailSpec, e: Exception) -> TailFailed:
    """Logged here, answered 500 by the views."""
    log.error("tail %s failed: %s: %s", tail.key, type(e).__name__, e)
    return TailFailed(f"tail {tail.key} failed: {type(e).__name__}: {e}")


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(1e3 * seconds, 1)
