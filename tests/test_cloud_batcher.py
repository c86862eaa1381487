"""Batching core (pure, time passed in), batch assembly, and the thread shell."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud_runtime.batcher import (BatchPolicy, BatchQueue, Batcher, BatcherClosed, Entry,
                                   QueueFull, ResultCountError, WaitTimeout, check_result_count)
from cloud_runtime.buckets import assemble, bucket_for, bucket_sizes, unpad
from concurrent.futures import Future


def entry(item, at):
    return Entry(item, at, Future())


# ---- pure core ------------------------------------------------------------------------------


def test_empty_queue_is_never_due_and_waits_for_a_submit():
    q = BatchQueue(BatchPolicy(max_batch=4, max_delay_s=0.01, max_queue=8))
    assert not q.due(100.0)
    assert q.wait_s(100.0) is None
    assert q.take(100.0) == []


def test_due_when_full_batch_even_before_the_delay():
    q = BatchQueue(BatchPolicy(max_batch=3, max_delay_s=10.0, max_queue=8))
    for i in range(2):
        q.offer(entry(i, at=0.0))
    assert not q.due(0.001)
    assert q.wait_s(0.001) == pytest.approx(9.999)
    q.offer(entry(2, at=0.002))
    assert q.due(0.002) and q.wait_s(0.002) == 0.0
    assert [e.item for e in q.take(0.002)] == [0, 1, 2]


def test_due_when_oldest_waited_max_delay_with_injected_clock():
    q = BatchQueue(BatchPolicy(max_batch=8, max_delay_s=0.5, max_queue=8))  # exact in binary
    q.offer(entry("a", at=1.0))
    q.offer(entry("b", at=1.25))
    assert q.take(1.4375) == []
    assert q.wait_s(1.125) == 0.375
    batch = q.take(1.5)  # the *oldest* entry's deadline counts
    assert [e.item for e in batch] == ["a", "b"]
    assert len(q) == 0


def test_take_caps_at_max_batch_and_keeps_fifo_order():
    q = BatchQueue(BatchPolicy(max_batch=2, max_delay_s=0.0, max_queue=10))
    for i in range(5):
        q.offer(entry(i, at=float(i)))
    assert [e.item for e in q.take(10)] == [0, 1]
    assert [e.item for e in q.take(10)] == [2, 3]
    assert [e.item for e in q.take(10)] == [4]


def test_zero_delay_dispatches_immediately():
    q = BatchQueue(BatchPolicy(max_batch=8, max_delay_s=0.0, max_queue=8))
    q.offer(entry("x", at=5.0))
    assert q.due(5.0)


def test_bounded_queue_refuses_when_full():
    q = BatchQueue(BatchPolicy(max_batch=2, max_delay_s=1.0, max_queue=2))
    assert q.offer(entry(1, 0.0)) and q.offer(entry(2, 0.0))
    assert not q.offer(entry(3, 0.0))
    assert len(q) == 2
    assert [e.item for e in q.drain()] == [1, 2] and len(q) == 0


def test_early_policy_starts_a_batch_once_no_announced_request_is_coming():
    early = BatchQueue(BatchPolicy(max_batch=8, max_delay_s=0.5, max_queue=8, early=True))
    early.offer(entry("a", at=1.0))
    assert early.due(1.0, coming=0) and early.wait_s(1.0, coming=0) == 0.0
    assert not early.due(1.0, coming=1)  # someone is decoding: wait for them, at most max_delay
    assert early.wait_s(1.25, coming=1) == 0.25
    assert early.due(1.5, coming=1)
    assert not early.due(1.0)  # coming unknown: plain max_delay rule
    classic = BatchQueue(BatchPolicy(max_batch=8, max_delay_s=0.5, max_queue=8))
    classic.offer(entry("a", at=1.0))
    assert not classic.due(1.0, coming=0)


def test_policy_rejects_nonsense():
    with pytest.raises(ValueError, match="max_batch >= 1"):
        BatchPolicy(max_batch=0, max_delay_s=0.0, max_queue=1)


@settings(max_examples=60, deadline=None)
@given(
    max_batch=st.integers(1, 6),
    delay=st.floats(0, 0.05),
    steps=st.lists(st.tuples(st.booleans(), st.floats(0, 0.02)), max_size=40),
)
def test_every_item_comes_out_once_in_order_and_batches_are_bounded(max_batch, delay, steps):
    q = BatchQueue(BatchPolicy(max_batch=max_batch, max_delay_s=delay, max_queue=1000))
    now, offered, taken = 0.0, [], []
    for is_offer, dt in steps:
        now += dt
        if is_offer:
            offered.append(len(offered))
            q.offer(entry(offered[-1], now))
        else:
            batch = q.take(now)
            assert len(batch) <= max_batch
            if batch:  # only taken when due: full, or the oldest waited long enough
                assert len(batch) == max_batch or now - batch[0].enqueued_at >= delay
            taken += [e.item for e in batch]
    while len(q):
        batch = q.take(now + delay + 1)
        assert 1 <= len(batch) <= max_batch
        taken += [e.item for e in batch]
    assert taken == offered


def test_result_count_mismatch_states_both_lengths():
    check_result_count([1, 2], 2)
    with pytest.raises(ResultCountError, match="returned 1 results for 3 inputs"):
        check_result_count([1], 3)
    with pytest.raises(ResultCountError, match="returned int"):
        check_result_count(7, 1)


# ---- batch assembly -----------------------------------------------------------------------


def test_bucket_sizes_are_powers_of_two_then_max():
    assert bucket_sizes(1) == (1,)
    assert bucket_sizes(5) == (1, 2, 4, 5)
    assert bucket_sizes(32) == (1, 2, 4, 8, 16, 32)
    assert bucket_for(3, bucket_sizes(32)) == 4
    assert bucket_for(5, bucket_sizes(5)) == 5
    with pytest.raises(ValueError, match="larger than the largest bucket"):
        bucket_for(6, bucket_sizes(5))


def test_assemble_pads_with_zero_rows_and_unpad_slices():
    xs = [np.full((2, 3), i + 1, np.float32) for i in range(3)]
    batch = assemble(xs, 4)
    assert batch.shape == (4, 2, 3) and batch.dtype == np.float32
    assert (batch[3] == 0).all() and (batch[2] == 3).all()
    rows = unpad(batch * 2, 4, 3)
    assert len(rows) == 3 and (rows[1] == 4).all()
    with pytest.raises(ValueError, match="tail returned 3 rows for a padded batch of 4"):
        unpad(batch[:3], 4, 3)
    with pytest.raises(ValueError, match="array 1 has shape"):
        assemble([np.zeros((2, 3)), np.zeros((3, 2))], 2)


# ---- thread shell -----------------------------------------------------------------------


def _submit_all(batcher, items, timeout=5.0):
    results, errors = {}, {}

    def call(i):
        try:
            results[i] = batcher.run(items[i], timeout)
        except Exception as e:  # noqa: BLE001  (the test inspects it)
            errors[i] = e

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(items))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert not any(t.is_alive() for t in threads), "a caller hung"
    return results, errors


def test_concurrent_callers_get_their_own_results_in_batches():
    sizes = []
    b = Batcher(lambda xs: [x * 10 for x in xs], BatchPolicy(4, 0.05, 64),
                on_batch=lambda n, s: sizes.append(n))
    try:
        results, errors = _submit_all(b, list(range(12)))
    finally:
        b.close()
    assert not errors
    assert {i: r.value for i, r in results.items()} == {i: i * 10 for i in range(12)}
    assert max(sizes) > 1 and max(sizes) <= 4 and sum(sizes) == 12
    assert all(r.batch_size <= 4 and r.queue_s >= 0 and r.run_s >= 0 for r in results.values())


def test_a_lone_request_waits_about_max_delay():
    b = Batcher(lambda xs: xs, BatchPolicy(8, 0.03, 8))
    try:
        t0 = time.monotonic()
        r = b.run("x", 5)
        assert r.value == "x" and r.batch_size == 1
        assert 0.025 <= r.queue_s and time.monotonic() - t0 < 2
    finally:
        b.close()


def test_batch_error_reaches_every_waiter_and_the_batcher_keeps_going():
    calls = []

    def fn(xs):
        calls.append(len(xs))
        if "bad" in xs:
            raise RuntimeError("tail exploded")
        return xs

    b = Batcher(fn, BatchPolicy(3, 0.2, 16))
    try:
        results, errors = _submit_all(b, ["a", "bad", "c"])
        assert not results and set(errors) == {0, 1, 2}
        assert all(isinstance(e, RuntimeError) and "exploded" in str(e) for e in errors.values())
        assert b.run("ok", 5).value == "ok"
    finally:
        b.close()


def test_wrong_result_count_fails_the_whole_batch_with_both_lengths():
    b = Batcher(lambda xs: xs[:-1], BatchPolicy(3, 0.2, 16))
    try:
        results, errors = _submit_all(b, [1, 2, 3])
    finally:
        b.close()
    assert not results and len(errors) == 3
    for e in errors.values():
        assert isinstance(e, ResultCountError) and "returned 2 results for 3 inputs" in str(e)


def test_full_queue_raises_queue_full():
    gate, entered = threading.Event(), threading.Event()

    def slow(xs):
        entered.set()
        gate.wait(5)
        return xs

    b = Batcher(slow, BatchPolicy(1, 0.0, 1))
    try:
        first = b.submit("running")
        assert entered.wait(5)  # the batcher took it and blocks in slow()
        queued = b.submit("queued")
        with pytest.raises(QueueFull, match="1 requests already waiting"):
            b.submit("refused")
        assert b.depth == 1
        gate.set()
        assert first.result(5).value == "running"
        assert queued.result(5).value == "queued"
    finally:
        gate.set()
        b.close()


def test_admission_counts_decoding_requests_so_refusals_come_before_the_decode():
    gate, entered = threading.Event(), threading.Event()
    b = Batcher(lambda xs: (entered.set(), gate.wait(5), xs)[2], BatchPolicy(1, 0.0, 2))
    try:
        first = b.submit("running")
        assert entered.wait(5)  # running, so the queue is empty
        b.submit("queued")
        b.announce()  # one decoding: queue (1) + coming (1) fill max_queue=2
        with pytest.raises(QueueFull, match="waiting or decoding"):
            b.announce()
        b.withdraw()  # the decode failed: room again
        b.announce()
        queued_late = b.submit("late", announced=True)
        gate.set()
        assert first.result(5).value == "running" and queued_late.result(5).value == "late"
    finally:
        gate.set()
        b.close()
    with pytest.raises(BatcherClosed):
        b.announce()


def test_run_times_out_and_the_cancelled_item_is_skipped():
    gate, entered = threading.Event(), threading.Event()
    seen = []

    def fn(xs):
        seen.extend(xs)
        entered.set()
        gate.wait(5)
        return xs

    b = Batcher(fn, BatchPolicy(1, 0.0, 8))
    try:
        b.submit("blocker")
        assert entered.wait(5)
        with pytest.raises(WaitTimeout):
            b.run("abandoned", 0.05)
        gate.set()
        assert b.run("after", 5).value == "after"
        assert "abandoned" not in seen
    finally:
        gate.set()
        b.close()


def test_close_fails_queued_requests_and_refuses_new_ones():
    gate, entered = threading.Event(), threading.Event()
    b = Batcher(lambda xs: (entered.set(), gate.wait(5), xs)[2], BatchPolicy(1, 0.0, 8))
    running = b.submit(1)
    assert entered.wait(5)
    queued = b.submit(2)
    closer = threading.Thread(target=b.close)
    closer.start()
    with pytest.raises(BatcherClosed):
        queued.result(5)
    gate.set()
    closer.join(5)
    assert running.result(5).value == 1  # the batch that was running still finishes
    with pytest.raises(BatcherClosed):
        b.submit(3)


def test_announced_requests_are_waited_for_and_a_lone_one_is_not_delayed():
    b = Batcher(lambda xs: xs, BatchPolicy(8, 2.0, 8, early=True))
    try:
        b.announce()
        r = b.run("alone", 5, announced=True)
        assert r.batch_size == 1 and r.queue_s < 0.5  # not the 2 s max_delay
        b.announce()
        b.announce()
        first = b.submit("first", announced=True)
        time.sleep(0.1)
        assert not first.done()  # the second one is still decoding
        second = b.submit("second", announced=True)
        assert first.result(5).batch_size == second.result(5).batch_size == 2
        b.announce()
        b.announce()
        third = b.submit("third", announced=True)
        time.sleep(0.05)
        assert not third.done()
        b.withdraw()  # the other one failed to decode: do not wait for it
        assert third.result(5).batch_size == 1 and third.result(5).queue_s < 1.0
    finally:
        b.close()
