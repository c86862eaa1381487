"""The board's head profile: interleaved timing, the busy-host check, host-independent emulation."""
from __future__ import annotations

import json

import pytest

from conftest import copy_bundle, run_module
from edge_runtime.profile import cap_at_full, emulate, time_interleaved
from scheduler import devices


def test_time_interleaved_visits_every_callable_each_round_in_changing_orders():
    calls: list[str] = []
    runs = {n: (lambda n=n: calls.append(n)) for n in "abc"}
    ms = time_interleaved(runs, repeats=16, warmup=1, block=2)
    assert set(ms) == set("abc") and all(v >= 0 for v in ms.values())
    per_round = 3 * (1 + 2)                       # one untimed and two timed calls each
    rounds = [calls[3 + per_round * r: 3 + per_round * (r + 1)] for r in range(8)]
    assert len(calls) == 3 + 8 * per_round
    assert all(sorted(set(r)) == ["a", "b", "c"] and r[0] == r[1] == r[2] for r in rounds)
    assert len({tuple(r[::3]) for r in rounds}) > 1  # the order changes between rounds


def test_a_prefix_head_slower_than_the_full_model_is_capped_and_reported():
    heads, warnings = cap_at_full({"early": 0.5, "late": 1.9, "noisy": 2.4}, full_ms=2.0)
    assert heads == {"early": 0.5, "late": 1.9, "noisy": 2.0}
    assert len(warnings) == 1 and "noisy" in warnings[0] and "2.40" in warnings[0]


def test_emulation_scales_by_the_reference_timed_with_the_heads():
    """A fake host twice as slow: heads and reference both double, the board's ms do not."""
    pi = devices.device_class("pi-zero2")
    fast = emulate({"full_ms": 2.0, "heads_ms": {"a": 1.0}, "host_reference_ms": 5.0}, pi)
    slow = emulate({"full_ms": 4.0, "heads_ms": {"a": 2.0}, "host_reference_ms": 10.0}, pi)
    assert fast["full_ms_emulated"] == pytest.approx(slow["full_ms_emulated"])
    assert fast["full_ms_emulated"] == pytest.approx(2.0 * pi.reference_ms / 5.0)
    assert slow["heads_ms_emulated"]["a"] == pytest.approx(pi.reference_ms / 5.0)
    with pytest.raises(devices.EmulationError):
        emulate({"full_ms": 2.0, "heads_ms": {}, "host_reference_ms": None}, pi)


def test_profile_cli_emulates_a_class_and_ends_with_one_json_line(profiled_bundle, tmp_path):
    bundle = copy_bundle(profiled_bundle[0], tmp_path / "b")
    r = run_module("edge_runtime.profile", str(bundle), "--device", "rpi4", "--threads", "1",
                   "--repeats", "3", "--no-progress", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["device_class"] == "rpi4" and out["threads"] == 1
    assert out["host_reference_ms"] > 0
    assert out["full_ms_emulated"] == pytest.approx(out["full_ms"] * 44.0 / out["host_reference_ms"])
    written = json.loads((bundle / "device-this-machine.json").read_text())
    assert written["version"] == 2 and written["host_reference_ms"] == out["host_reference_ms"]
    assert written["host_reference_1t_ms"] == written["host_reference_ms"]   # --threads 1
    assert not (bundle / "device-rpi4.json").exists()  # the host was measured, not a Pi


def test_profile_cli_refuses_to_emulate_without_the_reference(profiled_bundle, tmp_path):
    bundle = copy_bundle(profiled_bundle[0], tmp_path / "b")
    r = run_module("edge_runtime.profile", str(bundle), "--device", "rpi4", "--no-reference",
                   "--no-progress")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "--no-reference" in r.stderr
