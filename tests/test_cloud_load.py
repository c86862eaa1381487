"""The load every answer reports (cloud_runtime/load.py), and what the scheduler does with it."""
from __future__ import annotations

import pytest

from cloud_runtime.load import LoadMeter
from scheduler.core import Config, ConfigTable, Objective, Slo, Where
from scheduler.scheduler import Scheduler, SchedulerParams
from scheduler.simulate import Policy, SimParams, simulate
from scheduler.traces import constant


class Clock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


def test_load_meter_reports_a_sliding_window():
    clock = Clock()
    m = LoadMeter(max_batch=8, window_s=2.0, clock=clock)
    assert m.report().utilisation == 0.0 and m.report().in_flight == 0
    m.admitted()
    m.admitted()
    m.answered()
    for size, queue_s in ((8, 0.004), (4, 0.002)):
        clock.t += 0.5
        m.batch(size, 0.3)
        m.waited(queue_s)
    r = m.report()
    assert r.utilisation == pytest.approx(0.6 / 2.0)
    assert r.batch_occupancy == pytest.approx(0.75)
    assert r.queue_ms == pytest.approx(3.0)
    assert r.in_flight == 1
    clock.t += 1.6                       # the first batch (ended 2.1 s ago) left the window
    r = m.report()
    assert r.utilisation == pytest.approx(0.3 / 2.0) and r.batch_occupancy == pytest.approx(0.5)
    clock.t += 5.0
    assert m.report().utilisation == 0.0 and m.report().queue_ms == 0.0
    assert "utilisation=0.000" in m.report().header()


def test_load_meter_never_reports_more_than_all_of_the_window():
    clock = Clock()
    m = LoadMeter(max_batch=1, window_s=1.0, clock=clock)
    for _ in range(5):
        m.batch(1, 0.9)                  # overlapping batches from several tails
    assert m.report().utilisation == 1.0
    with pytest.raises(ValueError):
        LoadMeter(max_batch=0)


def _table() -> ConfigTable:
    """Cloud-only costs the cloud 10 ms a frame; a late split 1 ms; device-only 40 ms."""
    return ConfigTable.build([
        Config("full", None, Where.DEVICE, 40.0, 0.0, 0.0, 0.0, 0.0, 0.0, depth=3),
        Config("input", None, Where.CLOUD, 0.0, 1.0, 5000.0, 1.0, 10.0, 0.2, depth=0),
        Config("late", 4, Where.SPLIT, 20.0, 0.5, 500.0, 0.1, 1.0, 0.3, depth=2)])


def test_a_loaded_cloud_makes_devices_onload():
    """Reported utilisation makes the cloud stage 1 / (1 - u) slower: at 0.95 the cloud-heavy
    configuration loses to the later split."""
    choices = []
    for load in (0.0, 0.95):
        s = Scheduler(_table(), Objective.single("throughput"), Slo(max_drop_pp=1.0),
                      SchedulerParams(relief=False))
        for k in range(20):
            s.observe_rtt(0.01 * k, 20.0)
            s.observe_upload(0.01 * k, 20_000, 20_000 * 8 / 50e6 + 0.02)
            s.observe_cloud_load(load)
        for k in range(100):             # past the hysteresis dwell
            d = s.decide(1.0 + 0.01 * k)
        choices.append(d.key)
        assert s.state().cloud_scale == pytest.approx(1.0 / (1.0 - load))
    assert choices[0] == "input/jpeg" and choices[1] == "late/4"


def test_the_simulated_cloud_reports_load_and_devices_onload():
    """Other tenants holding 95% of the server: dyno moves later in the network."""
    depth = {}
    for load in (0.0, 0.95):
        res = simulate(_table(), constant(50.0, 30.0), Policy.DYNO, Objective.single("throughput"),
                       Slo(max_drop_pp=1.0), SimParams(frames=2000, rtt_ms=20.0, cloud_load=load),
                       keep_timeline=False)
        depth[load] = res.summary["mean_split_depth"]
    assert depth[0.95] > depth[0.0]
