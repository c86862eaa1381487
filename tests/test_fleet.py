"""The fleet simulator: frames are conserved, the cloud saturates, and misuse is one line."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from scheduler.bundle import load_bundle
from scheduler.fleet import (
    POLICIES,
    FleetParams,
    assign_classes,
    main,
    parse_mix,
    served_utilisation,
    simulate_fleet,
)
from scheduler.traces import constant, step

FIXTURES = Path(__file__).parent / "fixtures" / "scheduler"


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(FIXTURES, drop_estimate="point")


PARAMS = FleetParams(devices=30, mix=(("rpi4", 0.5), ("pi-zero2", 0.3), ("phone-high", 0.2)),
                     duration_s=10.0, camera_fps=30.0)


@pytest.mark.parametrize("policy", POLICIES)
def test_every_offered_frame_is_processed_or_skipped(bundle, policy):
    r = simulate_fleet(bundle, [step(20.0, 1.0, 5.0, 10.0)], [60.0], policy, PARAMS)
    assert r["frames_offered"] == pytest.approx(30 * 30.0 * 10.0)
    assert r["frames_processed"] + r["frames_skipped"] == pytest.approx(r["frames_offered"])
    assert 0 < r["frames_processed"] <= r["frames_offered"] * (1 + 1e-9)
    assert r["min_device_skipped"] >= -1e-6   # no device ever beats its camera
    assert 0.0 <= r["slo_attainment"] <= 1.0
    assert r["classes"] == {"rpi4": 15, "pi-zero2": 9, "phone-high": 6}


def test_cloud_only_saturates_the_cloud_as_the_fleet_grows(bundle):
    link = [constant(50.0, 20.0)]
    small = simulate_fleet(bundle, link, [40.0], "cloud", replace(PARAMS, devices=10))
    large = simulate_fleet(bundle, link, [40.0], "cloud", replace(PARAMS, devices=3000))
    assert small["slo_attainment"] == 1.0 and small["cloud_utilisation_max"] < 1.0
    assert large["cloud_utilisation_max"] >= 1.0 and large["slo_attainment"] < 0.5
    assert large["per_device_fps_mean"] < small["per_device_fps_mean"]
    onload = simulate_fleet(bundle, link, [40.0], "dyno-onload", replace(PARAMS, devices=3000))
    assert onload["cloud_ms_per_frame"] < large["cloud_ms_per_frame"]
    assert onload["fleet_fps"] > large["fleet_fps"]


def test_batching_stretches_a_server_until_the_largest_batch():
    assert served_utilisation(0.5, 0.1) == 0.5
    assert served_utilisation(1.5, 0.1) <= 1.0
    assert served_utilisation(100.0, 0.1) > 1.0
    assert served_utilisation(3.0, 1.0) == pytest.approx(3.0)   # no batching gain at all


def test_mix_parsing_and_class_counts():
    assert parse_mix("rpi4:0.5,phone-low:0.5") == (("rpi4", 0.5), ("phone-low", 0.5))
    counts = assign_classes(replace(PARAMS, devices=7, mix=(("rpi4", 0.5), ("pi3", 0.5))))
    assert len(counts) == 7 and {counts.count("rpi4"), counts.count("pi3")} == {3, 4}
    with pytest.raises(ValueError, match="sum to 0.9"):
        parse_mix("rpi4:0.5,pi3:0.4")
    with pytest.raises(ValueError, match="unknown device class"):
        parse_mix("rpi4:0.5,nokia:0.5")


@pytest.mark.parametrize("args,message", [
    (["--mix", "rpi4:0.5,nokia:0.5"], "unknown device class"),
    (["--mix", "rpi4:0.7,pi3:0.2"], "sum to"),
    (["--link", "/no/such/trace.up"], "neither a link class"),
    (["--policy", "dyno", "--devices", "0"], "devices and replicas"),
])
def test_cli_misuse_is_one_line_and_exit_2(args, message, capsys):
    assert main(["--bundle", str(FIXTURES), "--drop-estimate", "point", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and message in err


def test_cli_ends_with_one_json_line(capsys):
    assert main(["--bundle", str(FIXTURES), "--drop-estimate", "point", "--devices", "20",
                 "--mix", "rpi4:1", "--link", "wifi", "--seconds", "5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["devices"] == 20 and out["fleet_fps"] > 0 and "wall_s" in out
