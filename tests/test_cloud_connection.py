"""The body reader's deadlines, on a fake stream and clock (no sockets, no server)."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud_runtime.connection import BodyTimedOut, read_body
from splitinfer.testing import wait_until


class Trickle:
    """A stream that returns `chunks` one per read, each after `step_s` of a fake clock;
    a None chunk is a stall: the read times out."""

    def __init__(self, chunks, step_s: float):
        self.chunks, self.step_s, self.now = list(chunks), step_s, 0.0

    def clock(self) -> float:
        return self.now

    def read(self, n: int) -> bytes:
        self.now += self.step_s
        chunk = self.chunks.pop(0) if self.chunks else b""
        if chunk is None:
            try:
                raise TimeoutError("timed out")
            except TimeoutError as e:  # wrapped, as werkzeug wraps it
                raise ValueError("client disconnected") from e
        return chunk


@given(st.lists(st.binary(min_size=1, max_size=50), max_size=20))
def test_a_body_in_time_comes_back_whole(chunks):
    t = Trickle(chunks, step_s=0.01)
    assert read_body(t.read, None, read_timeout_s=5, deadline_s=10, clock=t.clock) == b"".join(chunks)


def test_a_trickle_hits_the_total_deadline_not_the_read_timeout():
    t = Trickle([b"x"] * 100, step_s=1.0)  # one byte a second, never silent for 5 s
    with pytest.raises(BodyTimedOut) as e:
        read_body(t.read, None, read_timeout_s=5, deadline_s=10, clock=t.clock)
    assert e.value.deadline and e.value.seconds == 10
    assert t.now == pytest.approx(10.0)  # no read started after the deadline


def test_a_stall_is_reported_as_a_stall_with_the_read_timeout():
    t = Trickle([b"ab", None], step_s=0.1)
    with pytest.raises(BodyTimedOut) as e:
        read_body(t.read, None, read_timeout_s=2, deadline_s=10, clock=t.clock)
    assert not e.value.deadline and e.value.seconds == 2


def test_a_stall_near_the_deadline_is_the_deadline():
    t = Trickle([b"a"] * 9 + [None], step_s=1.0)  # 1 s left when it stalls, less than the 2 s timeout
    with pytest.raises(BodyTimedOut) as e:
        read_body(t.read, None, read_timeout_s=2, deadline_s=10, clock=t.clock)
    assert e.value.deadline


def test_other_errors_pass_through():
    def read(n):
        raise ValueError("malformed chunk")

    with pytest.raises(ValueError, match="malformed"):
        read_body(read, None, read_timeout_s=2, deadline_s=10)


def test_the_watchdog_ends_a_blocked_read_at_the_deadline():
    import socket
    import time

    from cloud_runtime.connection import Watchdog

    a, b = socket.socketpair()
    try:
        dog = Watchdog()
        t0 = time.monotonic()
        alarm = dog.arm(a, t0 + 0.2)
        a.settimeout(30)
        assert a.recv(10) == b""  # woken by the shutdown, not by the 30 s timeout
        assert alarm.fired and time.monotonic() - t0 < 10
        kept = dog.arm(b, time.monotonic() + 0.05)
        dog.disarm(kept)
        b.settimeout(0.5)
        a.close()
        assert b.recv(10) == b""  # the peer's close, and no shutdown error on a disarmed alarm
        assert not kept.fired
    finally:
        a.close()
        b.close()


def test_the_watchdog_keeps_every_deadline_whatever_order_they_come_in():
    """Arming wakes the watchdog's thread only for a deadline earlier than all pending ones: a
    nearer deadline armed behind a far one, and one armed behind a cancelled one, still fire."""
    import socket
    import time

    from cloud_runtime.connection import Watchdog

    pairs = [socket.socketpair() for _ in range(3)]
    try:
        dog = Watchdog()
        far = dog.arm(pairs[0][0], time.monotonic() + 60)
        near = dog.arm(pairs[1][0], time.monotonic() + 0.1)
        pairs[1][0].settimeout(30)
        assert pairs[1][0].recv(10) == b""  # woken by the shutdown at 0.1 s, not the 30 s timeout
        dropped = dog.arm(pairs[2][1], time.monotonic() + 0.05)
        dog.disarm(dropped)
        behind = dog.arm(pairs[2][0], time.monotonic() + 0.15)
        pairs[2][0].settimeout(30)
        assert pairs[2][0].recv(10) == b""
        assert near.fired and behind.fired and not dropped.fired and not far.fired
    finally:
        for a, b in pairs:
            a.close()
            b.close()


def test_a_deadline_that_fires_as_the_body_completes_is_a_408():
    """The watchdog shut the read side while the last bytes came in: the body is complete, but
    the connection could not carry another request, so the answer is 408 and a close."""
    import socket

    from cloud_runtime.connection import Watchdog

    a, b = socket.socketpair()
    try:
        dog = Watchdog()
        chunks = [b"body", b""]

        def read(n):
            if not chunks[1:]:  # the end of the body: let the deadline pass first
                assert dog_fired.wait(5)
            return chunks.pop(0)

        import threading

        dog_fired = threading.Event()
        real_arm = dog.arm

        def arm(sock, at):
            alarm = real_arm(sock, at)
            threading.Thread(target=lambda: (wait_until(lambda: alarm.fired, 5), dog_fired.set()),
                             daemon=True).start()
            return alarm

        dog.arm = arm
        with pytest.raises(BodyTimedOut) as e:
            read_body(read, a, read_timeout_s=5, deadline_s=0.05, watchdog=dog)
        assert e.value.deadline
    finally:
        a.close()
        b.close()
