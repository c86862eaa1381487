"""Link classes: sourced, and their synthetic traces follow the published statistics."""
from __future__ import annotations

import numpy as np
import pytest

from scheduler.links import LINKS, link_class, link_trace, synthetic_rates
from scheduler.traces import TraceError

SHARED = LINKS["lte"].recording


def test_every_link_class_has_sources_and_a_plausible_rtt():
    assert {"3g-evdo", "3g-umts", "lte-slow", "lte", "5g", "wifi"} <= set(LINKS)
    for link in LINKS.values():
        assert link.rtt_source and link.uplink_source
        assert 1 < link.rtt_ms < 1000
        assert 0 <= link.p10_mbps <= link.p50_mbps <= link.p90_mbps
    with pytest.raises(ValueError, match="expected one of"):
        link_class("carrier-pigeon")


@pytest.mark.parametrize("name", sorted(LINKS))
def test_synthetic_traces_match_the_published_mean_and_are_seeded(name, tmp_path):
    link = LINKS[name]
    trace, origin = link_trace(link, duration_s=600, seed=3, folder=tmp_path)  # no recordings here
    assert origin == "synthetic seed 3"
    assert trace.mean_bps / 1e6 == pytest.approx(link.mean_mbps, rel=0.02)
    again, _ = link_trace(link, duration_s=600, seed=3, folder=tmp_path)
    other, _ = link_trace(link, duration_s=600, seed=4, folder=tmp_path)
    assert np.array_equal(trace.times_ms, again.times_ms)
    assert not np.array_equal(trace.times_ms, other.times_ms)


def test_synthetic_rates_spread_like_the_quantiles_they_follow():
    link = LINKS["lte"]
    rates = synthetic_rates(link, 20_000, seed=0)
    p10, p50, p90 = np.percentile(rates, [10, 50, 90])
    assert p10 < p50 < p90
    # rescaled to the published mean, the quantiles keep their ratios to the median
    assert p90 / p50 == pytest.approx(link.p90_mbps / link.p50_mbps, rel=0.1)
    assert p10 / p50 == pytest.approx(link.p10_mbps / link.p50_mbps, rel=0.15)
    lag1 = np.corrcoef(rates[:-1], rates[1:])[0, 1]
    assert lag1 > 0.5   # capacity is correlated over seconds, not white noise


def test_a_recorded_class_reads_its_recording_when_the_shared_folder_has_it():
    from scheduler.links import traces_dir

    if not (traces_dir() / SHARED).is_file():
        pytest.skip("the shared cellular traces are not on this machine")
    trace, origin = link_trace("lte")
    assert origin.startswith("recording ") and trace.name == "lte"
    assert trace.mean_bps / 1e6 == pytest.approx(LINKS["lte"].mean_mbps, rel=0.05)


def test_a_synthetic_trace_needs_some_duration(tmp_path):
    with pytest.raises(TraceError, match="duration_s"):
        link_trace("wifi", duration_s=0.5, folder=tmp_path)
