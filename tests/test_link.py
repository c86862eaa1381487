"""The in-process link emulator (demo.link.TokenBucketLink): it must time out like a socket."""
from __future__ import annotations

import time

import pytest

from demo.link import TokenBucketLink
from scheduler.traces import constant, outage
from splitinfer.errors import CloudError


def test_an_upload_the_link_can_carry_takes_its_transfer_time():
    link = TokenBucketLink(constant(8.0), rtt_ms=20.0)  # 1 MB/s
    link.start()
    t0 = time.monotonic()
    link.before_send(100_000, timeout_s=2.0)  # ~0.1 s of bytes + the RTT
    took = time.monotonic() - t0
    assert 0.08 < took < 0.6 and link.timeouts == 0


def test_an_upload_during_an_outage_times_out_after_its_timeout_and_is_counted():
    link = TokenBucketLink(outage(8.0, 0.01, 30.0, 60.0), rtt_ms=20.0)
    link.start()
    t0 = time.monotonic()
    with pytest.raises(CloudError) as e:
        link.before_send(10_000, timeout_s=0.2)
    assert e.value.kind == "timeout" and e.value.retryable
    assert 0.18 < time.monotonic() - t0 < 1.0 and link.timeouts == 1


def test_without_a_timeout_the_link_holds_the_upload_until_it_is_carried():
    link = TokenBucketLink(outage(8.0, 0.01, 0.3, 10.0), rtt_ms=0.0)
    link.start()
    t0 = time.monotonic()
    link.before_send(100_000)
    assert time.monotonic() - t0 >= 0.25
