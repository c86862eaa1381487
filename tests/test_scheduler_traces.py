"""Trace parsing and the TCP-like transfer model."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler.traces import (MSS, TraceError, constant, from_rates, last_index, outage,
                              read_mahimahi, read_trace, read_two_column, step, transfer)

TRACES = Path(__file__).resolve().parents[1].parent / "shared" / "traces" / "cellular-uplink"
REAL = sorted(TRACES.glob("*.up")) if TRACES.is_dir() else []
needs_traces = pytest.mark.skipif(not REAL, reason=f"no Mahimahi traces under {TRACES}")


def brute_force_last(trace, t0, nbytes, rtt, cwnd0=10, min_index=0):
    """Packet by packet, straight from the model's definition."""
    j = min_index - 1
    for k in range(max(1, math.ceil(nbytes / trace.mss))):
        r = math.floor(math.log2(k / cwnd0 + 1))
        j = max(j + 1, int(trace.index_at(t0 + r * rtt)))
    return j


def test_mahimahi_parser_on_a_tiny_file(tmp_path):
    f = tmp_path / "tiny.up"
    f.write_text("0\n0\n5\n10\n")          # 2 packets at 0 ms, one at 5, one at 10; period 10 ms
    tr = read_mahimahi(f)
    assert tr.period_ms == 10 and tr.times_ms.tolist() == [0, 0, 5, 10]
    assert tr.mean_bps == pytest.approx(4 * MSS * 8 / 0.010)
    # repeats wrap around: opportunity 4 is the first of the second period (10 + 0 ms)
    assert tr.time_of(4) == pytest.approx(0.010)
    assert tr.time_of(6) == pytest.approx(0.015)
    assert int(tr.index_at(0.011)) == 6
    assert read_trace(f).times_ms.tolist() == [0, 0, 5, 10]


def test_parsers_reject_bad_files(tmp_path):
    with pytest.raises(TraceError, match="not found"):
        read_trace(tmp_path / "missing.up")
    bad = tmp_path / "bad.up"
    bad.write_text("10\n5\n")
    with pytest.raises(TraceError, match="non-decreasing"):
        read_mahimahi(bad)
    zero = tmp_path / "zero.up"
    zero.write_text("0\n0\n")
    with pytest.raises(TraceError, match="period"):
        read_mahimahi(zero)
    (tmp_path / "empty.up").write_text("")
    with pytest.raises(TraceError):
        read_trace(tmp_path / "empty.up")


def test_two_column_format(tmp_path):
    f = tmp_path / "rates.txt"
    f.write_text("# time_s mbit_s\n0 12\n1 0\n2 1.2\n")
    tr = read_two_column(f)
    assert tr.duration_s == pytest.approx(3.0)
    rates = tr.rates_mbps(1.0)
    assert rates == pytest.approx([12.0, 0.0, 1.2], abs=0.02)
    assert read_trace(f).duration_s == pytest.approx(3.0)


def test_synthetic_traces():
    assert constant(8.0, 10).rates_mbps(1.0) == pytest.approx([8.0] * 10, abs=0.02)
    s = step(8.0, 1.0, 5.0, 10.0).rates_mbps(1.0)
    assert s[:5] == pytest.approx([8.0] * 5, abs=0.02) and s[5:] == pytest.approx([1.0] * 5,
                                                                                  abs=0.02)
    o = outage(4.0, 2.0, 4.0, 6.0).rates_mbps(1.0)
    assert o[2:4] == pytest.approx([0.0, 0.0]) and o[4] == pytest.approx(4.0, abs=0.02)
    with pytest.raises(TraceError):
        from_rates("x", [0.0, 0.0], [1.0, 2.0], 5.0)


@given(st.floats(min_value=0.1, max_value=50.0), st.floats(min_value=0.0, max_value=100.0),
       st.integers(min_value=1, max_value=3_000_000))
@settings(max_examples=60, deadline=None)
def test_transfer_is_exact_on_a_constant_rate_without_slow_start(mbps, t0, nbytes):
    tr = constant(mbps, 2000.0)      # long enough not to wrap (the period restarts the grid)
    out = transfer(tr, t0, nbytes, 0.05, cwnd0=1 << 30)
    packets = math.ceil(nbytes / MSS)
    per = MSS * 8 / (mbps * 1e6)
    # packets leave on the trace's grid of opportunities, one every `per` seconds
    first = float(tr.time_of(tr.index_at(t0)))
    assert t0 <= first < t0 + per + 1e-9
    assert out.last_delivery_s == pytest.approx(first + (packets - 1) * per, rel=1e-9, abs=1e-9)
    assert out.done_s == pytest.approx(out.last_delivery_s + 0.025)
    assert out.acked_s == pytest.approx(out.last_delivery_s + 0.05)


@given(st.floats(min_value=0.0, max_value=30.0), st.integers(min_value=1, max_value=200_000),
       st.integers(min_value=1, max_value=200_000), st.floats(min_value=0.0, max_value=0.3))
@settings(max_examples=60, deadline=None)
def test_transfer_is_monotone(t0, a, b, rtt):
    tr = step(6.0, 0.5, 10.0, 40.0)
    small, big = sorted((a, b))
    assert transfer(tr, t0, small, rtt).last_delivery_s <= transfer(tr, t0, big, rtt).last_delivery_s
    later = transfer(tr, t0 + 1.0, small, rtt).last_delivery_s
    assert transfer(tr, t0, small, rtt).last_delivery_s <= later
    assert transfer(tr, t0, small, rtt + 0.05).last_delivery_s >= \
        transfer(tr, t0, small, rtt).last_delivery_s


def test_slow_start_costs_round_trips():
    tr = constant(100.0, 60.0)        # fast link: the window, not the link, is the limit
    fast = transfer(tr, 1.0, 150_000, 0.1, cwnd0=1 << 20).last_delivery_s
    slow = transfer(tr, 1.0, 150_000, 0.1, cwnd0=10).last_delivery_s
    # 100 packets with IW10 take rounds of 10, 20, 40, 80: three extra round trips
    assert slow - fast == pytest.approx(0.3, abs=0.02)


def test_formula_matches_packet_by_packet_and_vectorised():
    tr = outage(2.0, 3.0, 5.0, 20.0)
    rng = np.random.default_rng(3)
    for _ in range(50):
        t0, nb, rtt = rng.uniform(0, 40), int(rng.integers(1, 300_000)), rng.uniform(0, 0.2)
        mi = int(tr.index_at(t0)) + int(rng.integers(0, 30))
        out = transfer(tr, t0, nb, rtt, min_index=mi)
        assert out.next_index - 1 == brute_force_last(tr, t0, nb, rtt, 10, mi)
    starts = rng.uniform(0, 10, 40)
    sizes = rng.integers(1, 200_000, 40)
    vec = last_index(tr, starts, sizes, 0.06)
    assert vec.tolist() == [transfer(tr, float(t), int(n), 0.06).next_index - 1
                            for t, n in zip(starts, sizes)]


def test_outage_delays_until_recovery():
    tr = outage(4.0, 2.0, 4.0, 10.0)
    out = transfer(tr, 2.5, 10_000, 0.05)
    assert out.last_delivery_s >= 4.0


@needs_traces
def test_real_traces_parse_and_match_the_readme():
    means = {p.stem: read_mahimahi(p).mean_bps / 1e6 for p in REAL}
    expected = {"ATT-LTE-driving": 0.83, "TMobile-LTE-short": 13.3,
                "TMobile-UMTS-driving": 0.94, "Verizon-EVDO-driving": 0.84}
    for name, mbps in expected.items():
        if name in means:
            assert means[name] == pytest.approx(mbps, rel=0.05)


@needs_traces
def test_transfers_on_a_real_trace_are_fast_and_exact():
    import time
    tr = read_mahimahi(REAL[0])
    assert tr.duration_s > 100
    rng = np.random.default_rng(0)
    t = time.perf_counter()
    for _ in range(500):
        t0, nb = float(rng.uniform(0, 2 * tr.duration_s)), int(rng.integers(1, 100_000))
        out = transfer(tr, t0, nb, 0.06)
        assert out.last_delivery_s >= t0
    assert (time.perf_counter() - t) / 500 < 2e-3    # well under a millisecond on a quiet box
    for _ in range(20):
        t0, nb = float(rng.uniform(0, 1500)), int(rng.integers(1, 200_000))
        assert transfer(tr, t0, nb, 0.06).next_index - 1 == brute_force_last(tr, t0, nb, 0.06)


def test_phases_join_the_first_seconds_of_each_trace():
    from scheduler.traces import constant, phases

    joined = phases("fast+slow", [(constant(10.0, 3.0), 5.0), (constant(1.0, 60.0), 5.0)])
    assert joined.duration_s == pytest.approx(10.0)
    rates = joined.rates_mbps(1.0)
    assert rates[:5] == pytest.approx([10.0] * 5, rel=0.02)   # the 3-s trace repeats to fill 5 s
    assert rates[5:10] == pytest.approx([1.0] * 5, rel=0.05)
    with pytest.raises(TraceError, match="positive"):
        phases("bad", [(constant(1.0), 0.0)])
