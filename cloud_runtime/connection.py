"""A request's connection: its body read under a total deadline, and a prompt end when the app
answered without reading the body.

Why not leave it to gunicorn: after any answer it keeps the connection alive, drains the unread
body for up to 5 s in the request thread, and a closing connection then lingers up to 2 s more
on the worker's *main* thread, one connection after another. Sixty stalled uploads took minutes
to close that way. Here, when the body was not read (a 408 for a stalled or trickled body, or a
refusal such as 401, 404 or 413 sent before reading), the answer says `Connection: close` and
the request thread itself ends the connection right after the answer: FIN, a short bounded
drain of what the client still sends (so the close is not a reset that could cost the client
its answer), then the read side shut, which makes gunicorn's own close immediate.
"""
from __future__ import annotations

import heapq
import itertools
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

#: How long and how much the request thread drains after answering a refused upload.
LINGER_MAX_S = 0.5
LINGER_MAX_BYTES = 8 << 20
READ_CHUNK = 64 << 10


class BodyTimedOut(Exception):
    """The body was not complete in time; `deadline` tells the total deadline from a stall."""

    def __init__(self, seconds: float, *, deadline: bool):
        super().__init__(seconds)
        self.seconds = seconds
        self.deadline = deadline


def read_body(read: Callable[[int], bytes], sock: socket.socket | None, *, read_timeout_s: float,
              deadline_s: float, clock: Callable[[], float] = time.monotonic,
              watchdog: "Watchdog | None" = None) -> bytes:
    """The whole body from `read`, each socket read bounded by the stall timeout and all of
    them by the total deadline, so a client trickling one byte a second cannot hold a thread.

    A WSGI server's read(n) may block until n bytes came, one trickled byte at a time; the
    `watchdog` shuts the socket's read side at the deadline to end such a read.
    Raises BodyTimedOut; other errors of `read` (size limits, a malformed stream) pass through.
    """
    deadline = clock() + deadline_s
    alarm = watchdog.arm(sock, deadline) if watchdog is not None and sock is not None else None
    parts: list[bytes] = []
    try:
        while True:
            remaining = deadline - clock()
            if remaining <= 0:
                raise BodyTimedOut(deadline_s, deadline=True)
            bounded_by_deadline = remaining < read_timeout_s
            if sock is not None:
                sock.settimeout(min(read_timeout_s, remaining))
            try:
                chunk = read(READ_CHUNK)
            except Exception as e:
                if alarm is not None and alarm.fired:
                    raise BodyTimedOut(deadline_s, deadline=True) from None
                if _timed_out(e):
                    raise BodyTimedOut(deadline_s if bounded_by_deadline else read_timeout_s,
                                       deadline=bounded_by_deadline) from None
                raise
            if not chunk:
                # disarm first: a deadline that fired as the last byte came has shut the read
                # side, and the connection could not carry another request
                if alarm is not None and watchdog.disarm(alarm):
                    raise BodyTimedOut(deadline_s, deadline=True)
                return b"".join(parts)
            parts.append(chunk)
    finally:
        if alarm is not None:
            watchdog.disarm(alarm)
        if sock is not None:
            try:
                sock.settimeout(read_timeout_s)
            except OSError:
                pass


@dataclass(order=True)
class Alarm:
    at: float
    seq: int
    sock: socket.socket = field(compare=False)
    fired: bool = field(default=False, compare=False)
    cancelled: bool = field(default=False, compare=False)


class Watchdog:
    """One daemon thread per worker that shuts the read side of sockets whose body deadline
    passed (a blocked recv then returns at once), instead of a timer thread per request."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._cond = threading.Condition()
        self._heap: list[Alarm] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, sock: socket.socket, at: float) -> Alarm:
        alarm = Alarm(at, next(self._seq), sock)
        with self._cond:
            # The thread already wakes by the earliest alarm (a cancelled one is popped then):
            # waking it for every request, whose deadline comes later, cost a thread switch each.
            wake = not self._heap or alarm < self._heap[0]
            heapq.heappush(self._heap, alarm)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="body-deadlines", daemon=True)
                self._thread.start()
            if wake:
                self._cond.notify()
        return alarm

    def disarm(self, alarm: Alarm) -> bool:
        """Cancel `alarm`; whether it had fired already (the lock orders the two)."""
        with self._cond:
            alarm.cancelled = True  # popped lazily from the heap
            return alarm.fired

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0].cancelled:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._cond.wait()
                    continue
                wait = self._heap[0].at - self._clock()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                alarm = heapq.heappop(self._heap)
                alarm.fired = True
                _shutdown(alarm.sock, socket.SHUT_RD)


def _timed_out(e: BaseException) -> bool:
    """A socket timeout, also when a WSGI layer wrapped it (werkzeug: ClientDisconnected)."""
    while e is not None:
        if isinstance(e, TimeoutError):
            return True
        e = e.__cause__ or e.__context__
    return False


# ---- ending a connection after the answer ---------------------------------------------------

_current = threading.local()


def remember_request(worker, req) -> None:
    """gunicorn's pre_request hook: the parsed request, so the app can mark it must-close.

    gthread runs this hook and the app on the same thread; post_request forgets it again.
    """
    _current.request = req


def forget_request(worker, req, environ, resp) -> None:
    """gunicorn's post_request hook."""
    _current.request = None


def end_after_answer(environ: dict, *, linger_s: float = LINGER_MAX_S,
                     linger_bytes: int = LINGER_MAX_BYTES) -> Callable[[], None] | None:
    """Mark this request's connection to close, and return what ends it once the answer is out
    (register it with `response.call_on_close`). None without gunicorn's request at hand (test
    clients, or gunicorn run without this module's hooks: see cloud_runtime/gunicorn_conf.py):
    shutting a socket whose answer said keep-alive would race a client reusing it.
    """
    req = getattr(_current, "request", None)
    sock = environ.get("gunicorn.socket")
    if req is None or sock is None:
        return None
    req.must_close = True  # gunicorn answers "Connection: close" and skips its own drain
    return lambda: shut(sock, linger_s=linger_s, linger_bytes=linger_bytes)


def shut(sock: socket.socket, *, linger_s: float, linger_bytes: int) -> None:
    """FIN after the answer, drain at most `linger_bytes` for at most `linger_s`, shut reads."""
    if not _shutdown(sock, socket.SHUT_WR):
        return
    left, deadline = linger_bytes, time.monotonic() + linger_s
    try:
        while left > 0:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            sock.settimeout(remaining)
            chunk = sock.recv(min(READ_CHUNK, left))
            if not chunk:
                break
            left -= len(chunk)
    except OSError:
        pass
    finally:
        _shutdown(sock, socket.SHUT_RD)


def _shutdown(sock: socket.socket, how: int) -> bool:
    """Shut one direction of the TCP connection itself. On a TLS socket this bypasses
    SSLSocket.shutdown, which would also drop the TLS layer (a 408 written after it would go
    out in plain text)."""
    try:
        socket.socket.shutdown(sock, how)
        return True
    except OSError:
        return False
