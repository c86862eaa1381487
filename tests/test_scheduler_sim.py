"""The trace-driven simulator and its CLI, on the fixture bundle and synthetic traces."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from scheduler import devices
from scheduler.bundle import load_bundle
from scheduler.core import Objective, Slo, Where
from scheduler.simulate import Policy, SimParams, fixed8_index, main, simulate
from scheduler.traces import constant, outage, step

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures" / "scheduler"
TRACES = ROOT.parent / "shared" / "traces" / "cellular-uplink"

THR = Objective.single("throughput")
SLO = Slo(max_drop_pp=1.0)


@pytest.fixture(scope="module")
def table():
    b = load_bundle(FIXTURES, drop_estimate="point")
    return b.table_for(devices.device_class("rpi4"), devices.cloud_class("gpu"))


def run(table, trace, policy, frames=1500, objective=THR, slo=SLO, **kw):
    return simulate(table, trace, policy, objective, slo, SimParams(frames=frames, **kw)).summary


def test_device_policy_never_uploads(table):
    s = run(table, constant(10.0, 60), Policy.DEVICE, frames=300)
    assert s["bytes_per_frame"] == 0 and s["cloud_ms_per_frame"] == 0 and s["switches"] == 0
    full = table.configs[table.full_index].head_ms
    assert s["throughput_fps"] == pytest.approx(1000 / full, rel=0.05)


def test_cloud_policy_sends_jpeg(table):
    s = run(table, constant(10.0, 60), Policy.CLOUD, frames=300)
    jpeg = next(c for c in table.configs if c.where is Where.CLOUD)
    assert s["bytes_per_frame"] == pytest.approx(jpeg.bytes)
    assert s["accuracy_drop_pp"] == pytest.approx(jpeg.drop_pp)


def test_dyno_offloads_on_a_fast_link_and_stays_home_on_a_slow_one(table):
    fast = run(table, constant(30.0, 120), Policy.DYNO)
    slow = run(table, constant(0.2, 120), Policy.DYNO)
    dev = run(table, constant(0.2, 120), Policy.DEVICE)
    assert fast["bytes_per_frame"] > 0
    assert fast["throughput_fps"] > 1.1 * dev["throughput_fps"]
    assert slow["throughput_fps"] >= 0.95 * dev["throughput_fps"]
    assert fast["accuracy_drop_pp"] <= 1.0 and slow["accuracy_drop_pp"] <= 1.0


def test_dyno_close_to_oracle_and_at_least_the_baselines_on_a_step(table):
    tr = step(30.0, 0.3, 20.0, 60.0)
    res = {p: run(table, tr, p, frames=4000, duration_s=40.0) for p in Policy}
    best_base = max(res[p]["throughput_fps"] for p in
                    (Policy.DEVICE, Policy.CLOUD, Policy.NEUROSURGEON, Policy.FIXED8))
    assert res[Policy.DYNO]["throughput_fps"] >= 0.95 * best_base
    assert res[Policy.DYNO]["throughput_fps"] >= 0.9 * res[Policy.ORACLE]["throughput_fps"]
    assert res[Policy.DYNO]["switches"] <= 10


def test_outage_falls_back_and_recovers(table):
    tr = outage(30.0, 10.0, 20.0, 40.0)
    res = simulate(table, tr, Policy.DYNO, THR, SLO, SimParams(frames=10_000, duration_s=35.0))
    s, tl = res.summary, res.timeline
    assert s["failures"] >= 1 and s["fallback_frames"] > 0
    during = [r for r in tl if 12.0 < r.t_s < 19.0]
    assert during and all(r.where == "device" for r in during)
    after = [r for r in tl if r.t_s > 25.0]
    assert after and not any(r.fallback for r in after)
    # onloaded again: every device frame now is a relief frame while uploads are backlogged
    assert all(r.relief for r in after if r.where == "device")
    assert sum(r.where != "device" for r in after) > 0.3 * len(after)
    cloud = run(table, tr, Policy.CLOUD, frames=10_000, duration_s=35.0)
    assert s["throughput_fps"] > cloud["throughput_fps"]


def test_the_board_goes_on_while_a_failed_upload_waits_out_its_timeout(table):
    """As the runtime does: a sender waits for the failing upload, the frame loop does not; the
    frame's local run takes the board once the upload has failed."""
    tr = outage(30.0, 10.0, 20.0, 40.0)
    res = simulate(table, tr, Policy.DYNO, THR, SLO, SimParams(frames=10_000, duration_s=35.0))
    full_s = table.configs[table.full_index].head_ms / 1e3
    failed = [r for r in res.timeline if r.failed]
    assert failed
    for f in failed:
        waited = [r for r in res.timeline if f.t_s < r.t_s < f.done_s - 2 * full_s]
        assert len(waited) >= (f.done_s - f.t_s) / full_s / 2, (f, len(waited))
    # the answer comes after the local run, which starts no earlier than the failure
    assert all(f.latency_ms >= 1e3 * full_s for f in failed)


def test_static_fallback_runs_the_cloud_policy_as_the_edge_runtime_does(table):
    """Pinned to its configuration, but on the device while the cloud is down, then back."""
    tr = outage(30.0, 10.0, 20.0, 40.0)
    waits = simulate(table, tr, Policy.CLOUD, THR, SLO, SimParams(frames=10_000, duration_s=35.0))
    falls = simulate(table, tr, Policy.CLOUD, THR, SLO,
                     SimParams(frames=10_000, duration_s=35.0, static_fallback=True))
    assert waits.summary["fallback_frames"] == 0 and waits.summary["failures"] == 0
    assert falls.summary["failures"] >= 1 and falls.summary["fallback_frames"] > 0
    during = [r for r in falls.timeline if 12.0 < r.t_s < 19.0]
    assert during and all(r.where == "device" for r in during)
    before = [r for r in falls.timeline if r.t_s < 9.0]
    after = [r for r in falls.timeline if r.t_s > 25.0]
    assert {r.where for r in before} == {"cloud"}
    assert after and {r.key for r in after if not r.fallback} == {before[0].key}
    assert falls.summary["window_fps"] > waits.summary["window_fps"]


def test_fixed8_picks_an_8_bit_split(table):
    i = fixed8_index(table, THR, SLO, 20e6, 60.0, 6)
    assert table.configs[i].bits == 8 and table.configs[i].where is Where.SPLIT


def test_camera_rate_source(table):
    s = run(table, constant(10.0, 60), Policy.DEVICE, frames=300, fps=15.0)
    assert s["throughput_fps"] == pytest.approx(15.0, rel=0.05)
    assert s["dropped_frames"] == 0


def test_cli_json_on_fixtures(tmp_path):
    timeline = tmp_path / "tl.json"
    trace = tmp_path / "t.txt"
    trace.write_text("0 5\n10 0.5\n20 5\n")
    out = subprocess.run(
        [sys.executable, "-m", "scheduler.simulate", "--bundle", str(FIXTURES), "--drop-estimate", "point", "--trace",
         str(trace), "--policy", "dyno", "--frames", "400", "--objective", "throughput",
         "--max-drop-pp", "1", "--slo-ms", "400", "--json", "--timeline", str(timeline)],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    s = json.loads(out.stdout)
    for key in ("policy", "frames", "throughput_fps", "latency_ms_mean", "latency_ms_p95",
                "bytes_per_frame", "cloud_ms_per_frame", "accuracy_drop_pp", "switches"):
        assert key in s
    assert s["policy"] == "dyno" and s["frames"] == 400 and s["device"] == "rpi4"
    rows = json.loads(timeline.read_text())
    assert len(rows) == 400 and {"t_s", "latency_ms", "split", "bits"} <= set(rows[0])


def test_cli_errors_are_one_line_and_exit_2(capsys, tmp_path):
    assert main(["--bundle", str(tmp_path / "nope"), "--trace", "synthetic:const:5"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "does not exist" in err
    assert main(["--bundle", str(FIXTURES), "--drop-estimate", "point", "--trace", "synthetic:const:5", "--policy",
                 "magic"]) == 2
    assert "unknown policy" in capsys.readouterr().err
    assert main(["--bundle", str(FIXTURES), "--drop-estimate", "point", "--trace", "synthetic:wobble"]) == 2
    assert main(["--bundle", str(FIXTURES), "--drop-estimate", "point", "--trace", "synthetic:const:5", "--device",
                 "nokia"]) == 2
    assert main(["--list-devices"]) == 0
    assert "rpi4" in capsys.readouterr().out


@pytest.mark.skipif(not TRACES.is_dir(), reason=f"no traces under {TRACES}")
def test_cli_on_a_real_trace():
    trace = sorted(TRACES.glob("*.up"))[0]
    assert main(["--bundle", str(FIXTURES), "--drop-estimate", "point", "--trace", str(trace),
                 "--policy", "neurosurgeon",
                 "--frames", "300", "--json"]) == 0


def test_scheduler_imports_no_tensorflow():
    code = ("import sys, scheduler, scheduler.simulate; "
            "print(any(m.split('.')[0] in ('tensorflow', 'keras', 'converter') for m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "False", out.stderr


def test_a_profile_without_bounds_needs_the_point_estimate(capsys):
    """The synthetic fixture is a version 1 profile: no confidence bounds, so the default upper
    estimate refuses it in one line that names the fix."""
    assert main(["--bundle", str(FIXTURES), "--trace", "synthetic:const:5", "--frames", "10"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no confidence bounds" in err and "--drop-estimate point" in err


def test_a_stalled_link_never_idles_the_device_longer_than_a_local_run(table):
    """Frames waiting for an in-flight slot over a stall are finished on the device after the
    scheduler's wait budget (one local run), so the device keeps working through the outage."""
    trace = outage(8.0, 10.0, 30.0, 60.0)
    res = simulate(table, trace, Policy.DYNO, THR, SLO,
                   SimParams(frames=10 ** 6, duration_s=50.0, pipeline_depth=2))
    tl = res.timeline
    full_s = table.configs[table.full_index].head_ms / 1e3
    # gaps after a failed upload are the fallback run itself (the device waits for the timeout)
    gaps = [b.t_s - a.t_s for a, b in zip(tl, tl[1:]) if not a.failed]
    assert max(gaps) < 3 * full_s
    assert res.summary["relief_frames"] > 0


def test_the_device_packs_the_next_frame_while_every_slot_is_taken():
    """As the runtime does: at the in-flight limit the board encodes the next JPEG while it waits
    for a slot, so one slot's cycle is its flight, not its flight plus the encode."""
    from scheduler.core import Config, ConfigTable

    table = ConfigTable.build([
        Config("full", None, Where.DEVICE, 1000.0, 0.0, 0.0, 0.0, 0.0, 0.0, depth=2),
        Config("input", None, Where.CLOUD, 0.0, 40.0, 1000.0, 0.0, 1.0, 0.0, depth=0)])
    s = run(table, constant(100.0, 60), Policy.CLOUD, frames=300, rtt_ms=100.0, rtt_jitter_ms=0.0,
            pipeline_depth=1, noise=0.0)
    # one slot: 40 ms encode, ~101 ms flight; packing after the slot frees would give ~7 fps
    assert s["throughput_fps"] == pytest.approx(1000 / 101.1, rel=0.05)
