"""What one worker reports of its own load with every answer, so devices can onload before it
saturates (docs/FORMATS.md, "load").

A sliding window over the batches the worker ran: the share of the window its tails were
running (utilisation), how long requests waited for a batch, and how full batches were; plus the
requests admitted and not yet answered. Thread-safe; the clock is injectable for tests.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass

WINDOW_S = 2.0


@dataclass(frozen=True)
class LoadReport:
    utilisation: float      # share of the last window_s the tails ran, 0..1
    queue_ms: float         # mean wait for a batch over the window
    batch_occupancy: float  # mean batch size / max batch over the window, 0..1
    in_flight: int          # other requests admitted and not yet answered
    window_s: float

    def as_json(self) -> dict:
        return {k: round(v, 4) if isinstance(v, float) else v for k, v in asdict(self).items()}

    def header(self) -> str:
        """The same figures as one `X-Splitinfer-Load` header value."""
        return (f"utilisation={self.utilisation:.3f}; queue_ms={self.queue_ms:.2f}; "
                f"batch_occupancy={self.batch_occupancy:.3f}; in_flight={self.in_flight}")


class LoadMeter:
    def __init__(self, max_batch: int, window_s: float = WINDOW_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if max_batch < 1 or not window_s > 0:
            raise ValueError(f"max_batch must be >= 1 and window_s > 0, got {max_batch}, {window_s}")
        self.max_batch, self.window_s, self._clock = max_batch, window_s, clock
        self._batches: deque[tuple[float, float, int]] = deque()  # (end, run_s, size)
        self._waits: deque[tuple[float, float]] = deque()         # (when, queue_s)
        self._in_flight = 0
        self._lock = threading.Lock()

    def admitted(self) -> None:
        with self._lock:
            self._in_flight += 1

    def answered(self) -> None:
        with self._lock:
            self._in_flight = max(0, self._in_flight - 1)

    def batch(self, size: int, run_s: float) -> None:
        with self._lock:
            self._batches.append((self._clock(), max(run_s, 0.0), size))

    def waited(self, queue_s: float) -> None:
        with self._lock:
            self._waits.append((self._clock(), max(queue_s, 0.0)))

    def report(self) -> LoadReport:
        with self._lock:
            now = self._clock()
            start = now - self.window_s
            while self._batches and self._batches[0][0] < start:
                self._batches.popleft()
            while self._waits and self._waits[0][0] < start:
                self._waits.popleft()
            # a batch that began before the window counts only for its part inside it
            busy = sum(min(run, end - start) for end, run, _ in self._batches)
            sizes = [size for _, _, size in self._batches]
            waits = [w for _, w in self._waits]
            return LoadReport(
                utilisation=min(1.0, busy / self.window_s),
                queue_ms=1e3 * sum(waits) / len(waits) if waits else 0.0,
                batch_occupancy=(sum(sizes) / len(sizes) / self.max_batch) if sizes else 0.0,
                in_flight=self._in_flight, window_s=self.window_s)
