"""The deployment planner: replicas by bisection, a recommendation, one-line misuse errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from scheduler.fleet import FleetParams
from scheduler.plan import main, recommend, replicas_needed

FIXTURES = Path(__file__).parent / "fixtures" / "scheduler"


@pytest.mark.parametrize("threshold", [1, 2, 3, 37, 64, 1000])
def test_replicas_needed_is_the_fewest_that_hold_the_slo(threshold):
    calls = []

    def run(p):
        calls.append(p.replicas)
        return {"slo_attainment": 1.0 if p.replicas >= threshold else 0.5, "cloud_ms_per_frame": 1.0}

    needed, r = replicas_needed(run, FleetParams())
    assert needed == threshold and r["slo_attainment"] == 1.0
    assert len(calls) <= 25


def test_a_policy_that_never_holds_the_slo_needs_no_finite_replicas():
    needed, _ = replicas_needed(lambda p: {"slo_attainment": 0.1, "cloud_ms_per_frame": 1.0},
                                FleetParams())
    assert needed is None


def test_the_recommendation_respects_the_budget_and_prefers_fewer_replicas():
    p = {"a": {"fleet_fps": 100.0, "replicas_needed": 4, "cloud_ms_per_frame": 1.0, "drop_pp": 0.2},
         "b": {"fleet_fps": 100.0, "replicas_needed": 2, "cloud_ms_per_frame": 1.0, "drop_pp": 0.2},
         "c": {"fleet_fps": 500.0, "replicas_needed": 1, "cloud_ms_per_frame": 1.0, "drop_pp": 3.0},
         "d": {"fleet_fps": 900.0, "replicas_needed": None, "cloud_ms_per_frame": 1.0, "drop_pp": 0}}
    assert recommend(p, max_drop_pp=1.0) == "b"
    assert recommend({"d": p["d"]}, 1.0) is None


BASE = ["--bundle", str(FIXTURES), "--drop-estimate", "point", "--fleet", "10", "--seconds", "5"]


@pytest.mark.parametrize("args,message", [
    (["--uplink", "lte", "--devices", "rpi4:0.5,nokia:0.5"], "unknown device class"),
    (["--uplink", "lte", "--devices", "rpi4:0.6,pi3:0.6"], "sum to"),
    (["--uplink", "/no/such.up", "--devices", "rpi4:1"], "neither a link class"),
    (["--uplink", "-3", "--devices", "rpi4:1"], "must be > 0"),
    (["--uplink", "lte", "--devices", "rpi4:1", "--cloud", "tpu"], "unknown cloud class"),
])
def test_misuse_is_one_line_and_exit_2(args, message, capsys):
    assert main(BASE + args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err


def test_json_names_every_policy_and_a_recommendation(capsys):
    assert main(BASE + ["--uplink", "20", "--devices", "pi-zero2:0.5,rpi4:0.5", "--json"]) == 0
    out = capsys.readouterr().out
    data = json.loads(out.strip().splitlines()[-1])
    assert set(data["policies"]) == {"device", "cloud", "neurosurgeon", "dyno", "dyno-onload"}
    for p in data["policies"].values():
        assert {"fleet_fps", "p95_ms", "slo_attainment", "cloud_ms_per_frame",
                "bytes_per_device_day", "replicas_needed"} <= set(p)
    assert data["policies"]["device"]["replicas_needed"] == 0
    assert data["recommended"] in data["policies"]
    assert "recommendation:" in out
