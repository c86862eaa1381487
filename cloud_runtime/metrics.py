"""Prometheus text exposition (format 0.0.4), written here to avoid a dependency.

Metrics are per worker process: every sample carries a `pid` label, so a scrape through a load
balancer shows which worker answered, and `sum by (...)` over pids aggregates the tier.
"""
from __future__ import annotations

import math
import os
import threading
from collections.abc import Callable, Iterable, Sequence

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(names: Sequence[str], values: Sequence[str], extra: str = "") -> str:
    parts = [f'{n}="{_escape(v)}"' for n, v in zip(names, values)]
    if extra:
        parts.append(extra)
    return "{" + ",".join(parts) + "}" if parts else ""


def _num(v: float) -> str:
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v)) if not float(v).is_integer() else str(int(v))


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str]):
        self.name = name
        self.help = help_text
        self.label_names = tuple(label_names)
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name, help_text, label_names):
        super().__init__(name, help_text, label_names)
        self._values: dict[tuple[str, ...], float] = {}

    def inc(self, *labels: str, by: float = 1.0) -> None:
        with self._lock:
            self._values[labels] = self._values.get(labels, 0.0) + by

    def value(self, *labels: str) -> float:
        with self._lock:
            return self._values.get(labels, 0.0)

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + [
            f"{self.name}{_labels(self.label_names, k)} {_num(v)}" for k, v in items
        ]


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name, help_text, label_names, buckets: Sequence[float]):
        super().__init__(name, help_text, label_names)
        self.buckets = tuple(sorted(float(b) for b in buckets))
        self._series: dict[tuple[str, ...], list[float]] = {}  # bucket counts..., sum, count

    def observe(self, value: float, *labels: str) -> None:
        with self._lock:
            s = self._series.setdefault(labels, [0.0] * (len(self.buckets) + 2))
            for i, b in enumerate(self.buckets):
                if value <= b:
                    s[i] += 1
            s[-2] += value
            s[-1] += 1

    def count(self, *labels: str) -> float:
        with self._lock:
            s = self._series.get(labels)
            return s[-1] if s else 0.0

    def lines(self) -> list[str]:
        with self._lock:
            items = sorted((k, list(v)) for k, v in self._series.items())
        out = self.header()
        for k, s in items:
            for b, c in zip(self.buckets, s):
                le = 'le="' + _num(b) + '"'
                out.append(f"{self.name}_bucket{_labels(self.label_names, k, le)} {_num(c)}")
            le_inf = 'le="+Inf"'
            out.append(f"{self.name}_bucket{_labels(self.label_names, k, le_inf)} {_num(s[-1])}")
            out.append(f"{self.name}_sum{_labels(self.label_names, k)} {_num(s[-2])}")
            out.append(f"{self.name}_count{_labels(self.label_names, k)} {_num(s[-1])}")
        return out


class Gauge(_Metric):
    """Read at scrape time from a callback, so it can never go stale."""

    kind = "gauge"

    def __init__(self, name, help_text, label_names,
                 read: Callable[[], Iterable[tuple[tuple[str, ...], float]]]):
        super().__init__(name, help_text, label_names)
        self._read = read

    def lines(self) -> list[str]:
        try:
            items = sorted(self._read())
        except Exception:  # a scrape must not fail because one reading did
            items = []
        return self.header() + [
            f"{self.name}{_labels(self.label_names, k)} {_num(v)}" for k, v in items
        ]


class Registry:
    """The metrics of one worker; `render` adds the pid label to every sample."""

    def __init__(self, pid: int | None = None):
        self.pid = str(os.getpid() if pid is None else pid)
        self._metrics: list[_Metric] = []

    def add(self, metric: _Metric) -> _Metric:
        self._metrics.append(metric)
        return metric

    def render(self) -> str:
        out: list[str] = []
        for m in self._metrics:
            for line in m.lines():
                out.append(line if line.startswith("#") else _with_pid(line, self.pid))
        return "\n".join(out) + "\n"


def _with_pid(sample: str, pid: str) -> str:
    name_labels, _, value = sample.rpartition(" ")
    if name_labels.endswith("}"):
        return f'{name_labels[:-1]},pid="{pid}"}} {value}'
    return f'{name_labels}{{pid="{pid}"}} {value}'


class ServerMetrics:
    """The metrics this service exports, with the hooks the views and batchers call."""

    def __init__(self, batch_buckets: Sequence[int], *, pid: int | None = None):
        self.registry = Registry(pid)
        self.requests = self.registry.add(Counter(
            "splitinfer_requests_total", "HTTP requests by endpoint and status.", ("endpoint", "status")))
        self.latency = self.registry.add(Histogram(
            "splitinfer_request_duration_seconds", "Request latency in the worker, by endpoint.",
            ("endpoint",), LATENCY_BUCKETS_S))
        self.batch_size = self.registry.add(Histogram(
            "splitinfer_batch_size", "Requests per tail call (before padding).", ("model", "split"),
            batch_buckets))
        self.tail_seconds = self.registry.add(Histogram(
            "splitinfer_tail_duration_seconds", "Tail call latency per batch.", ("model", "split"),
            LATENCY_BUCKETS_S))
        self._depth_readers: list[Callable[[], Iterable[tuple[tuple[str, ...], float]]]] = []
        self.registry.add(Gauge(
            "splitinfer_queue_depth", "Requests waiting for a batch.", ("model", "split"),
            self._read_depths))
        self._ready: Callable[[], bool] = lambda: False
        self._in_progress = 0
        self._in_progress_lock = threading.Lock()
        self.registry.add(Gauge(
            "splitinfer_requests_in_progress",
            "Requests holding a worker thread, until the answer is out and, when the body was "
            "not read, the connection closed.", (), lambda: [((), float(self._in_progress))]))
        self.registry.add(Gauge(
            "splitinfer_ready", "1 when this worker serves (tails loaded per the load mode).", (),
            lambda: [((), 1.0 if self._ready() else 0.0)]))

    def watch_queues(self, reader: Callable[[], Iterable[tuple[tuple[str, ...], float]]]) -> None:
        self._depth_readers.append(reader)

    def watch_ready(self, reader: Callable[[], bool]) -> None:
        self._ready = reader

    def _read_depths(self):
        for r in self._depth_readers:
            yield from r()

    def request_started(self) -> None:
        with self._in_progress_lock:
            self._in_progress += 1

    def request_finished(self) -> None:
        with self._in_progress_lock:
            self._in_progress -= 1

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        self.requests.inc(endpoint, str(status))
        self.latency.observe(seconds, endpoint)

    def observe_batch(self, model: str, split: str, size: int, seconds: float) -> None:
        self.batch_size.observe(size, model, split)
        self.tail_seconds.observe(seconds, model, split)

    def render(self) -> str:
        return self.registry.render()
