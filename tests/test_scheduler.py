"""Scheduler core: estimators, the latency model, the chooser, hysteresis, fallback, probing."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scheduler import devices
from scheduler.bundle import build_configs, load_bundle
from scheduler.core import (
    CompiledChooser,
    Config,
    ConfigTable,
    Metric,
    Objective,
    Slo,
    State,
    Where,
    choose,
    estimate,
    estimate_all,
)
from scheduler.estimators import BandwidthEstimator, Ewma, harmonic_mean, robust_rate, size_slope_rate
from scheduler.scheduler import Scheduler, SchedulerParams
from splitinfer.bundle.profile import load_profile
from splitinfer.errors import FormatError
from splitinfer.reference import REFERENCE_FLOPS

FIXTURES = Path(__file__).parent / "fixtures" / "scheduler"

rates = st.floats(min_value=1e3, max_value=1e9, allow_nan=False, allow_infinity=False)


def fixture_table(device: str = "rpi4", cloud: str = "gpu") -> ConfigTable:
    b = load_bundle(FIXTURES, drop_estimate="point")
    return b.table_for(devices.device_class(device), devices.cloud_class(cloud))


def feed(s: Scheduler, t0: float, t1: float, mbps: float, nbytes: float = 20_000,
         every_s: float = 0.05, rtt_ms: float = 60.0, rng: np.random.Generator | None = None,
         noise: float = 0.0) -> float:
    """Uploads of nbytes at a bandwidth of mbps from t0 to t1, one at a time (the next answer at
    least one transfer time after the last); returns the time reached."""
    t = t0
    while t < t1:
        bw = mbps * 1e6 * (float(rng.lognormal(0, noise)) if rng is not None else 1.0)
        s.observe_rtt(t, rtt_ms)
        s.observe_upload(t, nbytes, nbytes * 8 / bw + rtt_ms / 1e3)
        t += max(every_s, nbytes * 8 / bw)
    return t


# --- estimators -----------------------------------------------------------------------------

@given(st.lists(rates, min_size=1, max_size=30))
def test_harmonic_mean_is_bounded_by_the_samples(xs):
    h = harmonic_mean(xs)
    assert min(xs) * (1 - 1e-9) <= h <= max(xs) * (1 + 1e-9)


@given(st.lists(rates, min_size=1, max_size=30),
       st.lists(st.floats(min_value=1.0, max_value=1e6), min_size=30, max_size=30))
def test_weighted_robust_rate_is_bounded_by_the_samples(xs, ws):
    r = robust_rate(xs, ws[:len(xs)])
    assert min(xs) * (1 - 1e-9) <= r <= max(xs) * (1 + 1e-9)


@given(rates, st.floats(min_value=1e-3, max_value=1e3), st.integers(min_value=4, max_value=8))
def test_one_outlier_moves_the_robust_rate_little(base, factor, n):
    """Seven transfers at `base` and one at base*factor (a stall or a burst): within 2x."""
    xs = [base] * (n - 1) + [base * factor]
    r = robust_rate(xs, [1.0] * n)
    assert base / 2 <= r <= base * 2


@given(rates, st.floats(min_value=5.0, max_value=1e3))
def test_harmonic_mean_shrugs_off_one_fast_outlier(base, factor):
    assert harmonic_mean([base] * 7 + [base * factor]) <= base * 8 / 7 * (1 + 1e-9)


def test_harmonic_mean_rejects_bad_input():
    with pytest.raises(ValueError):
        harmonic_mean([])
    with pytest.raises(ValueError):
        harmonic_mean([1.0, 0.0])


def test_bandwidth_estimator_subtracts_rtt_and_ignores_idle_gaps():
    b = BandwidthEstimator()
    b.add(0.0, 100_000, 0.8 + 0.06, rtt_s=0.06)       # 1 Mbit/s + one RTT
    assert b.estimate_bps == pytest.approx(1e6, rel=1e-6)
    b.add(100.0, 100_000, 0.8 + 0.06, rtt_s=0.06)     # 100 s idle: still 1 Mbit/s
    assert b.estimate_bps == pytest.approx(1e6, rel=1e-6)


def test_small_transfers_are_only_a_lower_bound():
    b = BandwidthEstimator()
    b.add(0.0, 200_000, 0.2, rtt_s=0.0)               # 8 Mbit/s
    for i in range(8):
        b.add(10.0 + i, 500, 0.06, rtt_s=0.05)        # RTT-dominated: looks like 0.4 Mbit/s
    assert b.estimate_bps >= 4e6                      # not dragged down to 0.4 Mbit/s


def test_bandwidth_estimator_follows_a_step_in_a_few_samples():
    b = BandwidthEstimator()
    for i in range(8):
        b.add(i * 0.1, 50_000, 50_000 * 8 / 8e6)
    for i in range(3):
        b.add(1.0 + i * 0.1, 50_000, 50_000 * 8 / 1e6)
    assert b.estimate_bps == pytest.approx(1e6, rel=0.05)


@given(st.floats(min_value=1e5, max_value=1e9), st.floats(min_value=0.0, max_value=0.5),
       st.floats(min_value=0.0, max_value=1900.0),
       st.lists(st.floats(min_value=2000.0, max_value=10_000.0), min_size=4, max_size=12),
       st.lists(st.floats(min_value=20_000.0, max_value=60_000.0), min_size=4, max_size=12))
@settings(max_examples=60, deadline=None)
def test_the_size_slope_reads_the_rate_whatever_every_upload_pays_alike(rate, fixed_s, free_bytes, small, large):
    """Uploads of spread sizes over a link of `rate`: a fixed time (RTT, overheads) and bytes
    that pass for free (a token bucket's burst) shift every time alike; the slope is the rate."""
    sizes = small + large
    seconds = [fixed_s + (n - free_bytes) * 8 / rate for n in sizes]
    assert size_slope_rate(sizes, seconds) == pytest.approx(rate, rel=1e-6)


def test_the_size_slope_needs_spread_sizes_and_shrugs_off_a_few_queued_uploads():
    assert size_slope_rate([6000.0] * 20, [0.05] * 20) is None            # one size: no slope
    assert size_slope_rate([6000.0, 7000.0] * 10, [0.05, 0.051] * 10) is None  # barely spread
    sizes = [3000.0 + 250.0 * i for i in range(20)]
    seconds = [0.040 + n * 8 / 8e6 for n in sizes]
    for i in (3, 11, 17):   # three stuck behind other traffic
        seconds[i] += 0.2
    assert size_slope_rate(sizes, seconds) == pytest.approx(8e6, rel=0.05)


def test_small_jpegs_through_a_token_bucket_measure_the_link_not_the_burst():
    """The demo's tc link at a constant 8 Mbit/s: 3-8 kB frames, the first 1.6 kB of each let
    through at once, over a 40.3 ms path that pings measure at 42.7 ms (their own overheads).
    Each frame alone read 10-35 Mbit/s, and the estimate sat at 12-20 Mbit/s."""
    rng = np.random.default_rng(0)
    b = BandwidthEstimator()
    for i in range(60):
        n = float(rng.uniform(3000, 8000))
        seconds = 0.0403 + (n - 1600) * 8 / 8e6 + float(rng.uniform(0, 0.0015))
        b.add(i * 0.013, n, seconds, rtt_s=0.0427)
    assert b.estimate_bps == pytest.approx(8e6, rel=0.1)


def test_ewma():
    e = Ewma(0.5)
    assert e.add(10.0) == 10.0
    assert e.add(20.0) == 15.0
    with pytest.raises(ValueError):
        Ewma(0.0)


# --- model and chooser ----------------------------------------------------------------------

def test_fixture_has_realistic_shape():
    t = fixture_table()
    splits = [c for c in t.configs if c.where is Where.SPLIT and c.bits == 8]
    assert len(splits) == 12
    assert splits[0].bytes > 10 * splits[-1].bytes     # early activations are big
    assert len(t) == 12 * 8 + 2


@given(st.floats(min_value=1e4, max_value=1e9), st.floats(min_value=0, max_value=300),
       st.floats(min_value=0, max_value=50), st.floats(min_value=0.3, max_value=3),
       st.floats(min_value=0.3, max_value=3))
@settings(max_examples=50, deadline=None)
def test_vectorised_estimate_matches_scalar(bw, rtt, q, ds, cs):
    t = fixture_table()
    state = State(bw, rtt, q, ds, cs)
    p = estimate_all(t, state)
    for i in (0, 1, 5, len(t) - 1):
        e = estimate(t.configs[i], state)
        assert p.latency_ms[i] == pytest.approx(e.latency_ms)
        assert p.throughput_fps[i] == pytest.approx(e.throughput_fps)
        assert p.cloud_ms[i] == pytest.approx(e.cloud_ms)


def test_latency_model_adds_up():
    c = Config("s", 4, Where.SPLIT, head_ms=10, pack_ms=1, bytes=1000, unpack_ms=0.5, tail_ms=4,
               drop_pp=0.1)
    p = estimate(c, State(bandwidth_bps=1e6, rtt_ms=50, queue_ms=2, pipeline_depth=100))
    assert p.latency_ms == pytest.approx(11 + 8 + 50 + 2 + 4.5)
    assert p.throughput_fps == pytest.approx(1000 / 11)    # device is the slowest stage
    full = Config("full", None, Where.DEVICE, 20, 0, 0, 0, 0, 0)
    assert estimate(full, State(1e6, 50)).latency_ms == 20
    assert estimate(full, State(1e6, 50)).bytes == 0


@given(st.floats(min_value=1e4, max_value=1e9), st.floats(min_value=5, max_value=500),
       st.floats(min_value=0, max_value=5), st.sampled_from(list(Metric)))
@settings(max_examples=60, deadline=None)
def test_chooser_respects_slos_when_it_can(bw, max_lat, max_drop, metric):
    t = fixture_table()
    p = estimate_all(t, State(bw, 60.0))
    slo = Slo(max_latency_ms=max_lat, max_drop_pp=max_drop)
    ch = choose(p, Objective.single(metric), slo)
    feasible = (p.latency_ms <= max_lat) & (p.drop_pp <= max_drop)
    assert ch.slo_met == bool(feasible.any())
    if ch.slo_met:
        assert feasible[ch.index]
        vals = {Metric.LATENCY: p.latency_ms, Metric.THROUGHPUT: -p.throughput_fps,
                Metric.CLOUD: p.cloud_ms, Metric.BYTES: p.bytes}[metric]
        assert vals[ch.index] <= vals[feasible].min() + 1e-6
    # the compiled chooser agrees with the pure one
    cc = CompiledChooser(t, Objective.single(metric), slo)
    assert cc.best(cc.evaluate(State(bw, 60.0))).index == ch.index


def test_no_feasible_config_says_so_and_keeps_accuracy_first():
    t = fixture_table()
    p = estimate_all(t, State(1e6, 60.0))
    slo = Slo(max_latency_ms=1.0, max_drop_pp=0.5)       # nothing is that fast
    ch = choose(p, Objective.single("throughput"), slo)
    assert not ch.slo_met and "no configuration meets the SLO" in ch.reason
    assert p.drop_pp[ch.index] <= 0.5                     # accuracy bound still honoured
    ok = p.drop_pp <= 0.5
    assert p.latency_ms[ch.index] <= p.latency_ms[ok].min() + 1e-9   # least latency violation


def test_objectives_pick_what_they_say():
    t = fixture_table()
    p = estimate_all(t, State(50e6, 20.0))
    assert t.configs[choose(p, Objective.single("bytes"), Slo()).index].where is Where.DEVICE
    assert t.configs[choose(p, Objective.single("cloud"), Slo()).index].where is Where.DEVICE
    best_thr = choose(p, Objective.single("throughput"), Slo(max_drop_pp=1)).index
    assert p.throughput_fps[best_thr] == pytest.approx(p.throughput_fps[p.drop_pp <= 1].max())
    # under a throughput floor only offloading reaches, min-cloud uses the least cloud time
    need = float(p.throughput_fps[t.full_index]) * 1.2
    i = choose(p, Objective.single("cloud"), Slo(min_throughput_fps=need, max_drop_pp=1)).index
    ok = (p.throughput_fps >= need) & (p.drop_pp <= 1)
    assert ok[i] and p.cloud_ms[i] == pytest.approx(p.cloud_ms[ok].min())


def test_weighted_objective_parses_and_mixes():
    o = Objective.parse("latency=0.7,bytes=0.3")
    assert o.weights == ((Metric.LATENCY, 0.7), (Metric.BYTES, 0.3))
    assert Objective.parse("max-throughput").weights == ((Metric.THROUGHPUT, 1.0),)
    with pytest.raises(ValueError, match="unknown objective"):
        Objective.parse("speed")
    t = fixture_table()
    p = estimate_all(t, State(5e6, 60.0))
    i_lat = choose(p, Objective.single("latency"), Slo()).index
    i_mix = choose(p, Objective.parse("latency=0.5,bytes=0.5"), Slo()).index
    assert p.bytes[i_mix] <= p.bytes[i_lat]


# --- scheduler: hysteresis, fallback, probing -------------------------------------------------

def make_scheduler(objective: str = "throughput", relief: bool = True, **slo) -> Scheduler:
    return Scheduler(fixture_table(), Objective.parse(objective),
                     Slo(max_drop_pp=slo.pop("max_drop_pp", 1.0), **slo),
                     SchedulerParams(relief=relief))


@pytest.mark.parametrize("relief", [False, True])
def test_no_flapping_under_noise(relief):
    s = make_scheduler(relief=relief)
    rng = np.random.default_rng(0)
    t = feed(s, 0.0, 1.0, 20.0)
    s.decide(t)
    switches0 = s.switches
    # 60 s of +-20% bandwidth noise around a constant 20 Mbit/s, deciding every 20 ms
    for k in range(3000):
        if k % 3 == 0:
            bw = 20e6 * float(rng.lognormal(0, 0.2))
            s.observe_upload(t, 20_000, 20_000 * 8 / bw + 0.06)
        s.decide(t)
        t += 0.02
    assert s.switches - switches0 <= 2


@pytest.mark.parametrize("before,after", [(20.0, 0.3), (0.3, 20.0)])
def test_follows_a_bandwidth_step_within_two_seconds(before, after):
    # without device relief, so that the step changes which configuration is best by a lot
    # (relief makes every offloading configuration degrade gracefully towards device-only)
    s = make_scheduler(relief=False)
    t = feed(s, 0.0, 5.0, before, every_s=0.05)
    for _ in range(50):               # settle on the choice for `before`
        s.decide(t)
        t += 0.02
    first = s.chosen.key
    # reference: what a scheduler picks once it knows the new bandwidth
    ref = make_scheduler(relief=False)
    feed(ref, 0.0, 3.0, after)
    for k in range(50):
        ref.decide(3.0 + 0.02 * k)
    target = ref.chosen.key
    assert target != first, "the step must matter for this test"
    step_t, key, link_free = t, first, t
    while t < step_t + 2.0 and key != target:
        # uploads keep coming while offloading; while device-only only probes measure the link
        d = s.decide(t)
        key = s.chosen.key            # the chosen configuration; relief frames run locally
        if (d.where is not Where.DEVICE or s.probe_due(t)) and t >= link_free:  # one upload at a time
            if s.probe_due(t):
                s.probe_started(t)
            s.observe_rtt(t, 60.0)
            s.observe_upload(t, 16_000, 16_000 * 8 / (after * 1e6) + 0.06)
            link_free = t + 16_000 * 8 / (after * 1e6)
        t += 0.02
    # Reached the best configuration, or one the hysteresis keeps because the best is within
    # its margin (an upward step read through probes passes intermediate estimates).
    fps = dict(zip((c.key for c in ref.table.configs), ref.predictions().throughput_fps))
    assert key != first and fps[key] * (1 + s.p.margin) >= fps[target], (
        f"still {key} 2 s after the step (want {target}); estimate {s.state().bandwidth_bps / 1e6:.2f} Mbit/s")


def test_fallback_goes_device_only_and_backs_off():
    s = make_scheduler()
    t = feed(s, 0.0, 1.0, 20.0)
    assert s.decide(t).where is not Where.DEVICE
    s.observe_failure(t)
    d = s.decide(t)
    assert d.where is Where.DEVICE and d.fallback and "fallback" in d.reason
    delays = [s.retry_at_s - t]
    for _ in range(5):                      # every retry fails
        retry = s.retry_at_s
        assert not s.probe_due(retry - 1e-3)
        assert s.probe_due(retry)
        s.probe_started(retry)
        assert not s.probe_due(retry)       # one probe at a time
        t = retry + 0.1                     # the probe times out
        s.observe_failure(t, probe=True)
        delays.append(s.retry_at_s - t)
    assert delays == pytest.approx([0.5, 1.0, 2.0, 4.0, 8.0, 8.0])
    # the next retry succeeds: onload again
    s.observe_upload(t, 16_000, 16_000 * 8 / 20e6 + 0.06)
    s.observe_success(t)
    assert s.decide(t + 0.01).where is not Where.DEVICE


def test_frames_in_flight_when_the_link_dies_do_not_push_the_retry_back():
    """Four frames in flight time out one after another; the first retry still comes after the
    initial back-off, not after three doublings."""
    s = make_scheduler()
    t = feed(s, 0.0, 1.0, 20.0)
    s.observe_failure(t)
    for k in range(1, 4):
        s.observe_failure(t + 0.02 * k)
    assert s.retry_at_s == pytest.approx(t + 0.5)
    assert not s.cloud_ok


def _two_at_a_time(s: Scheduler, mbps: float, nbytes: float, rtt_s: float, rounds: int,
                   send_times: bool = True) -> None:
    """Uploads sent in pairs on one link: the second of each pair waits behind the first, so from
    its own send it takes two transfer times."""
    link_s, t = nbytes * 8 / (mbps * 1e6), 1.0
    for _ in range(rounds):
        s.observe_rtt(t, rtt_s * 1e3)
        for k in (1, 2):
            s.observe_upload(t + k * link_s + rtt_s, nbytes, k * link_s + rtt_s,
                             sent_s=t if send_times else None)
        t += 2 * link_s + rtt_s + 0.01


def test_uploads_that_share_the_link_measure_its_rate_not_a_share_of_it():
    s = make_scheduler()
    _two_at_a_time(s, 1.0, 20_000, 0.06, rounds=20)
    assert s.state().bandwidth_bps == pytest.approx(1e6, rel=0.1)
    alone = make_scheduler()   # without send times the second of each pair reads half the rate
    _two_at_a_time(alone, 1.0, 20_000, 0.06, rounds=20, send_times=False)
    assert alone.state().bandwidth_bps < 0.8e6


def test_a_frame_answered_after_a_later_probe_is_not_read_as_a_share_of_the_link():
    """3G, 417 ms RTT, 0.84 Mbit/s. Each round a 6 kB frame crosses in 57 ms but its answer waits
    at the cloud; a probe sent later crosses and is answered first. The frame did not wait behind
    the probe: read as the few ms after the probe's bytes, it measured 48 Mbit/s."""
    s = make_scheduler()
    bw, rtt_s, t = 0.84e6, 0.417, 0.0
    for _ in range(10):
        link_s = 60_000 * 8 / bw
        s.observe_rtt(t, rtt_s * 1e3)
        s.observe_upload(t + link_s + rtt_s, 60_000, link_s + rtt_s, sent_s=t)
        t += link_s + rtt_s + 0.01
    for _ in range(6):
        frame_s, probe_s = 6000 * 8 / bw, 60_000 * 8 / bw
        probe_sent = t + frame_s
        s.observe_upload(probe_sent + probe_s + rtt_s, 60_000, probe_s + rtt_s, probe=True, sent_s=probe_sent)
        s.observe_upload(t + 2.0, 6000, frame_s + rtt_s, sent_s=t)    # answered late, sent first
        t += 2.5
    assert s.state().bandwidth_bps < 2 * bw


def test_answers_that_bunch_behind_the_cloud_do_not_inflate_the_link():
    """One upload at a time, but a batching cloud answers them together: the gaps between answers
    say nothing about the link (reading them as link time overestimated Wi-Fi many times over)."""
    s = make_scheduler()
    link_s, rtt_s, t = 20_000 * 8 / 5e6, 0.06, 1.0
    for _ in range(20):
        s.observe_rtt(t, rtt_s * 1e3)
        answer_s = t + 4 * link_s + rtt_s + 0.05     # four uploads back to back, one batch
        for k in range(4):
            s.observe_upload(answer_s, 20_000, link_s + rtt_s, sent_s=t + k * link_s)
        t = answer_s + 0.01
    assert s.state().bandwidth_bps == pytest.approx(5e6, rel=0.1)


def test_probes_keep_bandwidth_known_while_device_only():
    s = make_scheduler()
    t = feed(s, 0.0, 1.0, 0.05, nbytes=2_000)  # 50 kbit/s: device-only is best
    assert s.decide(t).where is Where.DEVICE
    assert s.probe_due(t + s.p.probe_interval_s)
    assert not s.probe_due(t - 0.5)


def test_observed_latencies_rescale_the_model():
    s = make_scheduler("latency")
    feed(s, 0.0, 1.0, 5.0)
    full = s.table.configs[s.table.full_index]
    before = s.decide(1.0).latency_ms
    for _ in range(30):
        s.observe_device("full", full.head_ms * 2)
    assert s.state().device_scale == pytest.approx(2.0, rel=0.05)
    assert s.predictions().latency_ms[s.table.full_index] == pytest.approx(2 * full.head_ms, 0.05)
    assert before > 0


def test_upload_timeout_scales_with_the_prediction():
    s = make_scheduler()
    feed(s, 0.0, 1.0, 1.0)
    assert s.upload_timeout_s(100) == s.p.timeout_min_s
    assert s.upload_timeout_s(10_000_000) > 4 * 10_000_000 * 8 / 1.1e6


# --- loaders --------------------------------------------------------------------------------

def test_loader_rejects_unknown_versions(tmp_path):
    d = tmp_path / "b"
    shutil.copytree(FIXTURES, d)
    prof = json.loads((d / "profile.json").read_text())
    prof["version"] = 99
    (d / "profile.json").write_text(json.dumps(prof))
    with pytest.raises(FormatError, match="version 99"):
        load_profile(d / "profile.json")


def test_without_device_profile_heads_come_from_flops(tmp_path):
    d = tmp_path / "b"
    shutil.copytree(FIXTURES, d)
    (d / "device-this-machine.json").unlink()
    b = load_bundle(d, drop_estimate="point")
    assert b.device_estimated
    cfg = build_configs(b.profile, b.device, device_factor=1.0, manifest=b.manifest)
    full = next(c for c in cfg if c.where is Where.DEVICE)
    assert full.head_ms == pytest.approx(1e3 * b.manifest.full_flops /
                                         devices.THIS_MACHINE_FLOPS_PER_S)


def test_device_classes_span_real_fleets_with_sources():
    emulated = devices.emulated()
    assert len(emulated) >= 8
    assert {"pi-zero2", "pi3", "rpi4", "rpi5", "jetson-nano", "phone-low", "phone-mid",
            "phone-high", "xavier"} <= set(devices.DEVICES)
    assert all(d.source and d.reference_ms > 0 for d in emulated)
    assert devices.emulated()[0].name == "pi-zero2"   # slowest first
    ref = {d.name: d.reference_ms for d in emulated}
    assert ref["pi-zero2"] > ref["pi3"] > ref["rpi4"] > ref["rpi5"] > ref["phone-high"]
    assert ref["rpi4"] == pytest.approx(devices.XNNPACK_RPI4_MOBILENET_V2_MS)  # the anchor
    assert 0 < devices.CLOUDS["gpu"].factor < 0.1
    with pytest.raises(ValueError, match="--list-devices"):
        devices.device_class("nokia")
    assert math.isfinite(devices.THIS_MACHINE_FLOPS_PER_S)
    listing = devices.describe()
    assert all(d.name in listing for d in emulated) and "source:" in listing


@given(host_speed=st.floats(0.1, 10.0), head_ms=st.floats(0.01, 100.0))
def test_an_emulated_class_gives_the_same_ms_on_any_host(host_speed, head_ms):
    """A host k times slower measures the head and the reference k times slower: the board's
    time does not change."""
    rpi4 = devices.device_class("rpi4")
    fast = head_ms * rpi4.factor(5.0)
    slow = (head_ms * host_speed) * rpi4.factor(5.0 * host_speed)
    assert slow == pytest.approx(fast, rel=1e-9)
    assert fast == pytest.approx(head_ms * 44.0 / 5.0)


def test_emulation_needs_a_host_reference(tmp_path):
    assert devices.device_class("this-machine").factor(None) == 1.0
    with pytest.raises(devices.EmulationError, match="edge_runtime.profile"):
        devices.device_class("rpi4").factor(None)
    d = tmp_path / "b"
    shutil.copytree(FIXTURES, d)
    data = json.loads((d / "device-this-machine.json").read_text())
    data["version"], _ = 1, data.pop("host_reference_ms")  # a profile from before references
    (d / "device-this-machine.json").write_text(json.dumps(data))
    b = load_bundle(d, drop_estimate="point")
    assert b.device_factor(devices.device_class("this-machine")) == 1.0
    with pytest.raises(ValueError, match="re-run"):
        b.device_factor(devices.device_class("rpi4"))


def test_flops_estimates_emulate_independently_of_the_assumed_host_speed(tmp_path):
    d = tmp_path / "b"
    shutil.copytree(FIXTURES, d)
    (d / "device-this-machine.json").unlink()
    pi = devices.device_class("pi3")
    full = []
    for flops_per_s in (1e9, 3e10):
        b = load_bundle(d, drop_estimate="point", flops_per_s=flops_per_s)
        full.append(b.device.full_ms * b.device_factor(pi))
    assert full[0] == pytest.approx(full[1])
    assert full[0] == pytest.approx(b.manifest.full_flops / REFERENCE_FLOPS * pi.reference_ms)


@given(st.floats(min_value=1e4, max_value=1e9), st.floats(min_value=0, max_value=300),
       st.sampled_from(["latency=0.7,bytes=0.3", "throughput=1,cloud=1", "latency,throughput",
                        "cloud=0.2,bytes=0.8,latency=0.1"]))
@settings(max_examples=40, deadline=None)
def test_compiled_weighted_objective_matches_the_pure_one(bw, rtt, text):
    t = fixture_table()
    state = State(bw, rtt, 1.0, 1.3, 0.8)
    obj = Objective.parse(text)
    from scheduler.core import scores
    cc = CompiledChooser(t, obj, Slo(max_drop_pp=1.0))
    ev = cc.evaluate(state)
    assert np.allclose(ev.score, scores(estimate_all(t, state), obj), rtol=1e-9, atol=1e-12)
    assert cc.best(ev).index == choose(estimate_all(t, state), obj, Slo(max_drop_pp=1.0)).index


def _settle(s: Scheduler, t: float) -> float:
    """Settle on an offloading configuration: 40 frames, each answered one flight after it left
    (5 kB at 30 Mbit/s over a 60 ms RTT)."""
    for _ in range(40):
        s.decide(t)
        t += 5000 * 8 / 30e6 + 0.06
        s.observe_upload(t, 5000, 5000 * 8 / 30e6 + 0.06)
    return t


def test_relief_runs_frames_locally_while_the_uplink_is_backlogged():
    s = make_scheduler()
    t = feed(s, 0.0, 1.0, 30.0)
    t = _settle(s, t)
    assert s.chosen.where is not Where.DEVICE
    chosen = s.chosen.key
    kinds = [s.decide(t + 1e-4 * k) for k in range(20)]   # no answers come back: backlog grows
    assert sum(d.where is not Where.DEVICE for d in kinds) <= s.p.pipeline_depth
    relief = [d for d in kinds if d.relief]
    assert relief and all(d.where is Where.DEVICE and "relief" in d.reason for d in relief)
    assert s.chosen.key == chosen and s.relief_frames == len(relief)
    with pytest.raises(Exception):
        relief[0].split = "x"                 # decisions are frozen


def test_abandoned_frames_leave_the_pipeline_like_answered_ones():
    s = make_scheduler()
    t = feed(s, 0.0, 1.0, 30.0)
    t = _settle(s, t)
    sent = [d for d in (s.decide(t + 1e-4 * k) for k in range(20)) if d.where is not Where.DEVICE]
    assert sent and s.decide(t + 0.01).relief  # the pipeline is full
    for _ in sent:
        s.observe_abandoned()
    assert not s.decide(t + 0.011).relief      # and empty again, with nothing learnt
    assert s.cloud_ok


def test_without_relief_every_frame_follows_the_choice():
    s = make_scheduler(relief=False)
    t = feed(s, 0.0, 1.0, 30.0)
    ds = [s.decide(t + 0.02 * k) for k in range(60)]
    assert not any(d.relief for d in ds)
    assert len({d.key for d in ds[-20:]}) == 1


def test_offloading_with_only_small_uploads_probes_with_a_payload_long_enough_to_measure():
    s = make_scheduler()
    t = feed(s, 0.0, 1.0, 30.0, nbytes=200_000)  # 53 ms each at 30 Mbit/s: full-size samples
    for _ in range(40):
        s.decide(t)
        s.observe_upload(t, 5000, 5000 * 8 / 30e6 + 0.06)
        t += 0.02
    assert s.chosen.where is not Where.DEVICE
    assert not s.probe_due(t)                   # the link was measured within measure_interval_s
    # from now on only tiny payloads: each is a lower bound (RTT-dominated), none measures
    # (once the window's 5 kB ones are gone: with them, sizes spread and their slope measures)
    for _ in range(int(s.p.measure_interval_s / 0.02) + s.bandwidth.window + 5):
        s.observe_rtt(t, 60.0)
        s.observe_upload(t, 300, 300 * 8 / 30e6 + 0.06)
        t += 0.02
    assert s.probe_due(t)
    size = s.probe_bytes()
    assert s.p.probe_bytes <= size <= s.p.probe_max_bytes
    # sized to take probe_net_s at the estimate: at ~30 Mbit/s, ~190 kB
    assert size == pytest.approx(s.bandwidth.estimate_bps * s.p.probe_net_s / 8, rel=0.01)
    s.probe_started(t)
    assert not s.probe_due(t)                   # one probe at a time


def test_probes_grow_until_one_is_long_enough_to_measure_the_link():
    s = make_scheduler()
    s.observe_rtt(0.0, 60.0)
    sizes = []
    t = 0.0
    for _ in range(6):   # a 200 Mbit/s link: every probe so far crosses in well under min_net_s
        size = s.probe_bytes()
        sizes.append(size)
        s.probe_started(t)
        s.observe_upload(t, size, size * 8 / 200e6 + 0.06, probe=True)
        t += 0.5
    assert sizes == sorted(sizes) and sizes[1] >= 2 * sizes[0] and sizes[-1] == s.p.probe_max_bytes
    s.probe_started(t)   # the largest probe takes ~10 ms net: still short, so the size stays capped
    size = s.probe_bytes()
    s.observe_upload(t, size, size * 8 / 20e6 + 0.06, probe=True)   # 20 Mbit/s: ~100 ms, measured
    assert s.bandwidth.last_full_t_s == t
    # measured: back to sizing by the estimate alone (no growth factor)
    by_estimate = max(s.bandwidth.estimate_bps * s.p.probe_net_s / 8, s.p.probe_bytes)
    assert s.probe_bytes() == int(min(by_estimate, s.p.probe_max_bytes))


def test_over_a_long_rtt_probes_are_long_enough_and_take_a_small_share_of_the_link():
    """3G: 417 ms RTT at 0.84 Mbit/s. A 6 kB frame crosses in 57 ms, under a quarter of the RTT,
    so no frame measures the link: probes do, each one long enough to, and rarely enough to
    leave the frames at least 1 - probe_share of the link."""
    s = make_scheduler()
    bw, rtt_s, t = 0.84e6, 0.417, 0.0
    for _ in range(20):
        s.observe_rtt(t, rtt_s * 1e3)
        s.observe_upload(t, 60_000, 60_000 * 8 / bw + rtt_s, sent_s=t - 60_000 * 8 / bw - rtt_s)
        t += 0.6
    assert s.state().bandwidth_bps == pytest.approx(bw, rel=0.05)
    size = s.probe_bytes()
    assert (size * 8 / bw) >= s.bandwidth.full_net_s(rtt_s)     # it will measure, not bound
    probe_bytes, frame_bytes, t0 = 0, 0, t
    while t < t0 + 60.0:                                       # a minute of small frames
        if s.probe_due(t):
            s.probe_started(t)
            n = s.probe_bytes()
            probe_bytes += n
            s.observe_upload(t + n * 8 / bw + rtt_s, n, n * 8 / bw + rtt_s, probe=True, sent_s=t)
            t += n * 8 / bw
        s.observe_upload(t + 0.057 + rtt_s, 6000, 0.057 + rtt_s, sent_s=t)
        frame_bytes += 6000
        t += 0.1
    assert 0 < probe_bytes <= 1.2 * s.p.probe_share * (probe_bytes + frame_bytes) / (1 - s.p.probe_share)


def test_an_upload_waits_at_least_timeout_factor_local_runs():
    """A failed upload is finished on the device: a board that takes 0.5 s a frame gives the
    link 4 x 0.5 s, not the 1 s floor."""
    table = ConfigTable.build([
        Config("full", None, Where.DEVICE, 500.0, 0.0, 0.0, 0.0, 0.0, 0.0, depth=2),
        Config("mid", 4, Where.SPLIT, 5.0, 1.0, 1000.0, 0.1, 1.0, 0.1, depth=1)])
    s = Scheduler(table, Objective.single("throughput"), Slo(max_drop_pp=1.0))
    feed(s, 0.0, 1.0, 50.0, nbytes=1000, rtt_ms=40.0)
    assert s.upload_timeout_s(1000) == pytest.approx(s.p.timeout_factor * 0.5)
    fast = make_scheduler()
    feed(fast, 0.0, 1.0, 50.0, nbytes=1000, rtt_ms=40.0)
    assert fast.upload_timeout_s(1000) == pytest.approx(fast.p.timeout_min_s)


def test_one_or_two_packet_uploads_cannot_raise_the_estimate_alone():
    b = BandwidthEstimator()
    b.add(0.0, 12_000, 0.096 + 0.043, rtt_s=0.043)   # 1 Mbit/s, measured
    for i in range(20):  # 1.1 kB frames through a token bucket's burst: 1 ms past the RTT
        b.add(3.0 + 0.05 * i, 1100, 0.044, rtt_s=0.043)
    assert b.estimate_bps == pytest.approx(1e6, rel=1e-6)   # not 8.8 Mbit/s
    for i in range(3):   # 6 kB JPEGs crossing in 2 ms: a faster link, proven
        b.add(5.0 + 0.05 * i, 6000, 0.045, rtt_s=0.043)
    assert b.estimate_bps > 10e6
    first = BandwidthEstimator()
    first.add(0.0, 1100, 0.044, rtt_s=0.043)   # nothing else known: even a tiny one is a guess
    assert first.estimate_bps == pytest.approx(1100 * 8 / 1e-3)


def _two_config_scheduler(full_ms: float, depth: int = 2) -> Scheduler:
    """Device-only (full_ms) or a split (5 ms head, 1 ms pack, 1 kB) on a fast link."""
    table = ConfigTable.build([
        Config("full", None, Where.DEVICE, full_ms, 0.0, 0.0, 0.0, 0.0, 0.0, depth=2),
        Config("mid", 4, Where.SPLIT, 5.0, 1.0, 1000.0, 0.1, 1.0, 0.1, depth=1)])
    s = Scheduler(table, Objective.single("throughput"), Slo(max_drop_pp=1.0),
                  SchedulerParams(pipeline_depth=depth))
    feed(s, 0.0, 1.0, 50.0, nbytes=1000, rtt_ms=40.0)
    return s


def _fill_and_answer(s: Scheduler, t: float, flight_s: float | list[float], rounds: int = 20) -> float:
    """Offload `depth` frames at t, answer them flight_s later; repeat (a steady link), or once
    per flight time when given a list."""
    for f in (flight_s if isinstance(flight_s, list) else [flight_s] * rounds):
        sent = [s.decide(t) for _ in range(s.p.pipeline_depth)]
        assert all(d.where is Where.SPLIT for d in sent)
        t += f
        for _ in sent:
            s.observe_upload(t, 1000, f)
        t += 1e-3
    return t


@pytest.mark.parametrize("full_ms,relieved", [(200.0, False), (40.0, True)])
def test_at_the_in_flight_limit_relief_only_when_the_device_would_idle_longer(full_ms, relieved):
    """Slots free 50 ms after each send. Waiting ~50 ms beats a 200 ms local run; a 40 ms one
    fits in the wait, so it runs."""
    s = _two_config_scheduler(full_ms)
    t = _fill_and_answer(s, 1.0, 0.05)
    assert [s.decide(t).where for _ in range(2)] == [Where.SPLIT, Where.SPLIT]
    d = s.decide(t + 1e-3)            # both slots taken, answers due in ~49 ms
    assert d.relief is relieved


def test_at_the_in_flight_limit_an_answer_later_than_every_recent_flight_means_a_stall():
    s = _two_config_scheduler(200.0)
    t = _fill_and_answer(s, 1.0, 0.05)
    for _ in range(2):
        s.decide(t)
    late = s.decide(t + 0.3)          # 300 ms without an answer: every recent flight took 50 ms
    assert late.relief and late.where is Where.DEVICE


def test_a_stall_that_just_began_is_not_worth_a_long_local_run():
    """60 ms without an answer where every flight took 50 ms: a stall, expected to last about as
    long again, so a 400 ms local run would leave the slots idle; a 300 ms old one would not."""
    s = _two_config_scheduler(400.0)
    t = _fill_and_answer(s, 1.0, 0.05)
    for _ in range(2):
        s.decide(t)
    assert not s.decide(t + 0.06).relief
    assert s.decide(t + 0.4).relief


def test_relief_weighs_the_slot_time_it_leaves_unused():
    """Flights take 50 ms, one in five 1 s. At the limit, a 400 ms local run would most likely
    leave the freed slots unused for ~350 ms, the frames of a 40 frames/s pipeline: not worth
    one frame, although one wait in five is longer than the run (a 0.9 quantile of the wait
    said to run it)."""
    s = _two_config_scheduler(400.0)
    t = _fill_and_answer(s, 1.0, ([0.05] * 4 + [1.0]) * 6)
    for _ in range(2):
        s.decide(t)
    d = s.decide(t + 1e-3)
    assert d.where is Where.SPLIT and not d.relief


def test_after_a_fallback_only_a_gain_beyond_the_margin_leaves_device_only():
    """The split is predicted 1% better than device-only: not worth leaving it for."""
    table = ConfigTable.build([
        Config("full", None, Where.DEVICE, 10.0, 0.0, 0.0, 0.0, 0.0, 0.0, depth=2),
        Config("mid", 4, Where.SPLIT, 9.8, 0.1, 1000.0, 0.1, 1.0, 0.1, depth=1)])
    s = Scheduler(table, Objective.single("throughput"), Slo(max_drop_pp=1.0),
                  SchedulerParams(relief=False))
    t = feed(s, 0.0, 1.0, 50.0, nbytes=1000, rtt_ms=40.0)
    s.observe_failure(t)
    s.observe_success(t + 0.1)
    assert s.decide(t + 0.2).where is Where.DEVICE


def test_single_threaded_work_scales_by_the_one_core_reference():
    """Packing and JPEG encoding run on one core on the board: they scale by the reference on
    one thread on both sides; heads by the multi-threaded one."""
    pi = devices.device_class("pi-zero2")
    assert pi.reference_1t_ms > pi.reference_ms          # one core is slower than four
    assert pi.serial_factor(8.0, 5.0) == pytest.approx(pi.reference_1t_ms / 8.0)
    assert pi.serial_factor(None, 5.0) == pytest.approx(pi.factor(5.0))   # older profiles
    assert devices.device_class("this-machine").serial_factor(None, None) == 1.0
    b = load_bundle(FIXTURES, drop_estimate="point")
    table = b.table_for(pi, devices.cloud_class("gpu"))
    plain = b.table(b.device_factor(pi), devices.cloud_class("gpu"))
    ratio = b.serial_factor(pi) / b.device_factor(pi)
    for c, p in zip(table.configs, plain.configs):
        assert c.head_ms == pytest.approx(p.head_ms)
        assert c.pack_ms == pytest.approx(p.pack_ms * ratio)
