"""Dynamic batching: a pure queue core (time is an argument) and a thin thread shell.

Concurrent requests for one (model, split) wait until `max_batch` of them are queued or the
oldest has waited `max_delay_s`, then run as one call. With `early` (the server's default) a batch also
starts as soon as no *announced* request is still on its way (callers `announce` before they
decode and submit after), so a lone request at low load does not pay max_delay for nothing,
while under load the requests that pile up during a tail call still form one batch.

The core decides *when* and *what*; the shell only sleeps, calls the batch function and hands
each caller its own result or the error. Every waiter is bounded by a timeout, and a batch
function that returns the wrong number of results fails the whole batch with both lengths.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class QueueFull(RuntimeError):
    """The bounded queue has no room; the caller should answer 503 with Retry-After."""


class BatcherClosed(RuntimeError):
    """The batcher stopped (server shutting down) before this request ran."""


class WaitTimeout(TimeoutError):
    """The result did not come within the caller's timeout."""


class ResultCountError(RuntimeError):
    """The batch function returned a different number of results than it was given inputs."""


@dataclass(frozen=True)
class BatchPolicy:
    max_batch: int
    max_delay_s: float
    max_queue: int
    early: bool = False  # start a batch once no announced request is still coming

    def __post_init__(self) -> None:
        if self.max_batch < 1 or self.max_queue < 1 or not self.max_delay_s >= 0:
            raise ValueError(
                f"Expected max_batch >= 1, max_queue >= 1, max_delay_s >= 0. Received: {self}"
            )


@dataclass(frozen=True)
class Entry(Generic[T]):
    item: T
    enqueued_at: float
    future: Future


@dataclass(frozen=True)
class Batched(Generic[R]):
    """One caller's result plus what the batch cost it."""

    value: R
    queue_s: float  # from enqueue to the start of its batch
    run_s: float  # the batch function's duration (shared by the batch)
    batch_size: int
    replica: str | None = None  # which replica ran it, where another process batches (Ray)


# --------------------------------------------------------------------------------------------
# Pure core
# --------------------------------------------------------------------------------------------


class BatchQueue(Generic[T]):
    """FIFO of entries with the batching decision; no threads, no clock (pass `now`)."""

    def __init__(self, policy: BatchPolicy):
        self.policy = policy
        self._entries: deque[Entry[T]] = deque()

    def __len__(self) -> int:
        return len(self._entries)

    def offer(self, entry: Entry[T]) -> bool:
        """Append; False (nothing changed) when the queue is full."""
        if len(self._entries) >= self.policy.max_queue:
            return False
        self._entries.append(entry)
        return True

    def due(self, now: float, coming: int | None = None) -> bool:
        """A batch should start now: enough entries, the oldest waited long enough, or (early
        policy) `coming` - announced requests not yet queued - is 0. None: unknown."""
        if not self._entries:
            return False
        if len(self._entries) >= self.policy.max_batch:
            return True
        if self.policy.early and coming is not None and coming <= 0:
            return True
        return now - self._entries[0].enqueued_at >= self.policy.max_delay_s

    def wait_s(self, now: float, coming: int | None = None) -> float | None:
        """How long until the next batch is due: None when empty (wait for a submit)."""
        if not self._entries:
            return None
        if self.due(now, coming):
            return 0.0
        return self._entries[0].enqueued_at + self.policy.max_delay_s - now

    def take(self, now: float, coming: int | None = None) -> list[Entry[T]]:
        """The next batch (oldest first, at most max_batch) if one is due, else []."""
        if not self.due(now, coming):
            return []
        n = min(len(self._entries), self.policy.max_batch)
        return [self._entries.popleft() for _ in range(n)]

    def drain(self) -> list[Entry[T]]:
        out = list(self._entries)
        self._entries.clear()
        return out


def check_result_count(results: Sequence[Any], n_inputs: int) -> None:
    """A batch function must return exactly one result per input."""
    try:
        n = len(results)
    except TypeError:
        raise ResultCountError(
            f"batch function returned {type(results).__name__}, expected a sequence of "
            f"{n_inputs} results"
        ) from None
    if n != n_inputs:
        raise ResultCountError(
            f"batch function returned {n} results for {n_inputs} inputs; expected exactly one "
            "result per input"
        )


# --------------------------------------------------------------------------------------------
# Thread shell
# --------------------------------------------------------------------------------------------


class Batcher(Generic[T, R]):
    """Runs `fn(list_of_items) -> list_of_results` on a daemon thread, batching submissions."""

    def __init__(
        self,
        fn: Callable[[list[T]], Sequence[R]],
        policy: BatchPolicy,
        *,
        name: str = "batcher",
        clock: Callable[[], float] = time.monotonic,
        on_batch: Callable[[int, float], None] | None = None,
    ):
        self._fn = fn
        self._clock = clock
        self._on_batch = on_batch
        self._core: BatchQueue[T] = BatchQueue(policy)
        self._cond = threading.Condition()
        self._closed = False
        self._coming = 0  # announced, not yet submitted
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def policy(self) -> BatchPolicy:
        return self._core.policy

    @property
    def depth(self) -> int:
        """Requests waiting for a batch (not counting one running now)."""
        with self._cond:
            return len(self._core)

    def announce(self) -> None:
        """A request for this batcher is on its way (decoding); pair with submit or withdraw.

        Admission happens here, before the decode: refusing an overload must cost less than
        serving it. QueueFull when waiting plus decoding requests fill `max_queue`."""
        with self._cond:
            if self._closed:
                raise BatcherClosed("the batcher is shut down; retry on another worker")
            if len(self._core) + self._coming >= self._core.policy.max_queue:
                raise QueueFull(f"queue full: {self._core.policy.max_queue} requests already "
                                "waiting or decoding")
            self._coming += 1

    def withdraw(self) -> None:
        """An announced request will not be submitted after all (it failed to decode)."""
        with self._cond:
            self._coming = max(0, self._coming - 1)
            self._cond.notify()

    def submit(self, item: T, *, announced: bool = False) -> Future:
        """Queue one item; its Future resolves to a `Batched`. QueueFull when no room."""
        future: Future = Future()
        with self._cond:
            if announced:
                self._coming = max(0, self._coming - 1)
            if self._closed:
                raise BatcherClosed("the batcher is shut down; retry on another worker")
            if not self._core.offer(Entry(item, self._clock(), future)):
                self._cond.notify()
                raise QueueFull(
                    f"queue full: {self._core.policy.max_queue} requests already waiting"
                )
            self._cond.notify()
        return future

    def run(self, item: T, timeout_s: float, *, announced: bool = False) -> Batched[R]:
        """Submit and wait at most `timeout_s`; raises the batch's error or WaitTimeout."""
        future = self.submit(item, announced=announced)
        try:
            return future.result(timeout=timeout_s)
        except FutureTimeout:
            future.cancel()  # still queued: it is dropped when its batch is taken
            raise WaitTimeout(f"no result within {timeout_s:g} s (queue depth {self.depth})") from None

    def close(self, timeout_s: float = 5.0) -> None:
        """Stop taking work; fail whatever is still queued with BatcherClosed."""
        with self._cond:
            self._closed = True
            leftovers = self._core.drain()
            self._cond.notify_all()
        _fail(leftovers, BatcherClosed("the server is shutting down; retry"))
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)

    def _next_batch(self) -> list[Entry[T]] | None:
        with self._cond:
            while True:
                if self._closed:
                    return None
                now = self._clock()
                batch = self._core.take(now, self._coming)
                if batch:
                    return batch
                self._cond.wait(timeout=self._core.wait_s(now, self._coming))

    def _loop(self) -> None:
        try:
            while (batch := self._next_batch()) is not None:
                self._run_batch(batch)
        finally:  # also if the loop itself broke: nobody may wait forever
            with self._cond:
                self._closed = True
                leftovers = self._core.drain()
            _fail(leftovers, BatcherClosed("the batcher stopped; retry"))

    def _run_batch(self, batch: list[Entry[T]]) -> None:
        live = [e for e in batch if e.future.set_running_or_notify_cancel()]
        if not live:
            return
        started = self._clock()
        try:
            results = self._fn([e.item for e in live])
            check_result_count(results, len(live))
        except Exception as e:  # every waiter gets the error
            _fail(live, e)
            return
        run_s = self._clock() - started
        for entry, value in zip(live, results):
            entry.future.set_result(Batched(value, started - entry.enqueued_at, run_s, len(live)))
        if self._on_batch is not None:
            try:
                self._on_batch(len(live), run_s)
            except Exception:  # metrics must never break serving
                pass


def _fail(entries: list[Entry[Any]], error: BaseException) -> None:
    for entry in entries:
        if entry.future.done():
            continue
        if entry.future.running() or entry.future.set_running_or_notify_cancel():
            entry.future.set_exception(error)
