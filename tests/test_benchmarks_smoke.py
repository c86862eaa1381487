"""The codec and edge benchmarks run end to end on a real (tiny) bundle and write their JSON.

Quick mode only: this checks that the benchmarks work, not what they measure.
"""
from __future__ import annotations

import json

import pytest

from benchmarks import cloud_backends, edge_switch, packing, scale_out



def test_benchmarks_explain_how_to_build_a_missing_bundle(tmp_path, capsys):
    for bench in (packing, edge_switch):
        assert bench.main(["--bundle", str(tmp_path / "none"), "--out", str(tmp_path / "x.json")]) == 2
        err = capsys.readouterr().err
        assert "python -m converter zoo:fashion --out build/fashion" in err
        assert "python -m edge_runtime.profile build/fashion" in err
    assert not (tmp_path / "x.json").exists()


@pytest.mark.slow
def test_packing_benchmark_quick(profiled_bundle, tmp_path, capsys):
    bundle, images = profiled_bundle
    out = tmp_path / "packing.json"
    assert packing.main(["--bundle", str(bundle), "--data", str(images), "--quick",
                         "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Goals" in printed and "Synthetic" in printed
    r = json.loads(out.read_text())
    for key in ("up_to", "fewest_bytes", "pack", "per_split", "synthetic", "goals", "jpeg"):
        assert key in r, key
    few, pack = r["fewest_bytes"], r["pack"]
    assert few["vs_float32"] > 0 and few["vs_jpeg"] > 0
    assert r["up_to"]["vs_float32"] >= few["vs_float32"]
    assert pack["split"] == few["split"] and pack["pack_mbps"] > 0 and pack["pack_ms_mean"] > 0
    assert pack["head_ms_device_profile"] is not None
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert [row["split"] for row in r["per_split"]] == [s["name"] for s in manifest["splits"] if s["head"]]
    groups = {row["group"] for row in r["synthetic"]["summary"]}
    assert {"mnv2-relu6", "r50-relu"} <= groups
    assert all(row["vs_float32"] > 1 for row in r["synthetic"]["summary"] if row["bits"] <= 8)
    assert {g["status"] for g in r["goals"]} <= {"PASS", "FAIL", "N/A"} and len(r["goals"]) == 4


@pytest.mark.slow
def test_edge_switch_benchmark_quick(profiled_bundle, tmp_path):
    bundle, images = profiled_bundle
    out = tmp_path / "edge_switch.json"
    assert edge_switch.main(["--bundle", str(bundle), "--data", str(images), "--quick",
                             "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    for key in ("switching", "lazy_load", "pipelining", "fallback", "goals"):
        assert key in r, key
    sw = r["switching"]
    assert sw["same_head_ms_per_frame"] > 0 and sw["alternating_ms_per_frame"] > 0
    assert sw["added_ms_per_switch"] is not None and r["lazy_load"]["added_ms_per_switch"] > 0
    pipe = r["pipelining"]
    assert set(pipe["fps"]) == {"serial", "senders1_depth1", "default"}
    assert all(v > 0 for v in pipe["fps"].values()) and pipe["default_vs_serial"] > 0
    assert pipe["fallbacks"] == 0 and pipe["device_class"] == "rpi4"
    fb = r["fallback"]
    assert fb["full_ms_this_run"] > 0 and fb["head_ms_this_run"] > 0 and fb["per_split"]


def test_selection_math_on_profile_rows():
    configs = [
        {"split": "a", "bits": 2, "bytes_mean": 100.0, "drop_pp": 2.0, "float32_bytes": 8000},
        {"split": "a", "bits": 4, "bytes_mean": 200.0, "drop_pp": 0.5, "float32_bytes": 8000},
        {"split": "b", "bits": 4, "bytes_mean": 50.0, "drop_pp": 0.0, "float32_bytes": 400},
        {"split": "b", "bits": 32, "bytes_mean": 300.0, "drop_pp": 0.0, "float32_bytes": 400},
    ]
    ok = packing.eligible(configs, 1.0)
    assert packing.up_to(ok)["split"] == "a" and packing.vs_float32(packing.up_to(ok)) == 40.0
    assert packing.fewest_bytes(ok)["split"] == "b"
    rows = packing.per_split(configs, ["a", "b", "c"], 1.0, jpeg_bytes=1000.0)
    assert [r["bits"] for r in rows] == [4, 4, None] and rows[1]["vs_jpeg"] == 20.0
    assert packing.lossless_bytes(configs, "b") == 300.0


def test_switch_cost_math():
    assert edge_switch.switch_counts(3, 10) == (2, 29)
    assert edge_switch.switch_counts(1, 10) == (0, 0)
    # 27 extra switches cost 27 ms more in every round: 1 ms per switch
    assert edge_switch.per_switch_ms([0.100, 0.200], [0.127, 0.227], 3, 10) == pytest.approx(1.0)
    assert edge_switch.median_split(["a", "b", "c", "d"]) == "b"


def test_up_to_pools_a_second_bundle_of_the_same_model_only(tmp_path):
    main = [{"split": "a", "bits": 4, "bytes_mean": 100.0, "float32_bytes": 2000, "drop_pp": 0.0}]
    sparse_dir = tmp_path / "sparse"
    sparse_dir.mkdir()
    row = {"split": "z", "bits": 2, "bytes_mean": 100.0, "float32_bytes": 9000, "drop_pp": 0.5,
           "drop_upper_pp": 0.9}
    doc = {"model_sha256": "ab" * 32, "confidence": {"level": 0.95}, "configs": [row]}
    (sparse_dir / "profile.json").write_text(json.dumps(doc))
    extra, note = packing.extra_configs(sparse_dir, "ab" * 32)
    assert note is None and extra == [dict(row, bundle=str(sparse_dir))]
    top = packing.up_to(packing.eligible(main + extra, 1.0))
    assert top["split"] == "z" and top["bundle"] == str(sparse_dir)
    assert packing.eligible(extra, 0.5) == []  # the budget holds the upper bound, not the point
    del doc["confidence"]  # a profile without bounds is not pooled
    (sparse_dir / "profile.json").write_text(json.dumps(doc))
    unbounded, note = packing.extra_configs(sparse_dir, "ab" * 32)
    assert unbounded == [] and "no confidence bounds" in note
    (sparse_dir / "profile.json").write_text(json.dumps({**doc, "confidence": {"level": 0.95}}))
    other, note = packing.extra_configs(sparse_dir, "cd" * 32)
    assert other == [] and "another model" in note
    missing, note = packing.extra_configs(tmp_path / "nothing", "ab" * 32)
    assert missing == [] and "--build-sparse" in note


@pytest.mark.slow
def test_cloud_backends_benchmark_quick(profiled_bundle, tmp_path):
    """Both real servers, the agreement of the two backends and the profiler with each."""
    bundle, images = profiled_bundle
    out = tmp_path / "cloud_backends.json"
    before = (bundle / "profile.json").read_bytes()
    assert cloud_backends.main(["--bundle", str(bundle), "--data", str(images), "--seconds", "0.3",
                                "--clients", "2", "--agreement-images", "8", "--profile-images", "8",
                                "--tail-rows", "16", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert {(row["backend"], row["where"]) for row in r["serving"]} == {
        (b, w) for b in ("tf", "litert") for w in ("early", "middle", "late")}
    assert all(row["req_s"] > 0 and row["errors"] == 0 for row in r["serving"])
    assert {(row["backend"], row["where"], row["batch"]) for row in r["tail_only"]} == {
        (b, w, n) for b in ("tf", "litert") for w in ("early", "middle", "late") for n in (1, 8, 16)}
    assert all(row["ms_per_row"] > 0 for row in r["tail_only"])
    assert set(r["tail_only_ratio_tf_over_litert"]) == {f"{w} batch {n}" for w in ("early", "middle", "late")
                                                        for n in (1, 8, 16)}
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert set(r["agreement"]) == {s["name"] for s in manifest["splits"]}
    assert min(r["agreement"].values()) >= 0.875 and max(r["max_logit_diff"].values()) < 1e-3
    assert [p["backend"] for p in r["profile"]] == ["litert", "tf"] and all(p["seconds"] > 0 for p in r["profile"])
    assert r["bundle_bytes"]["tails_tflite"] > 0
    assert (bundle / "profile.json").read_bytes() == before  # profiled a copy, not the user's bundle
    assert all(row["client_cpu_ms_per_request"] > 0 for row in r["serving"])
    assert r["middle_ceiling"]["batch"] in (1, 8, 16) and r["middle_ceiling"]["ceiling"] > 0


def test_the_serving_ceiling_is_the_tails_ratio_diluted_by_what_every_request_shares():
    tails_alone = cloud_backends.serving_ceiling(1.839, 0.536, 0.0)
    assert tails_alone["ceiling"] == pytest.approx(1.839 / 0.536, abs=1e-3)
    budget = tails_alone["shared_ms_for_goal"]
    assert budget == pytest.approx((1.839 - 3 * 0.536) / 2, abs=1e-4)
    assert cloud_backends.serving_ceiling(1.839, 0.536, budget)["ceiling"] == pytest.approx(3.0, abs=1e-3)
    assert cloud_backends.serving_ceiling(1.839, 0.536, 2 * budget)["ceiling"] < 3.0


def test_scale_out_configs_parse_or_fail_in_words():
    assert scale_out.parse_configs("gunicorn:1, ray:2,ray-split:1") == [
        ("gunicorn", 1), ("ray", 2), ("ray-split", 1)]
    for bad in ("ray", "ray:0", "tfserving:1", "ray:x"):
        with pytest.raises(ValueError, match="expected ENGINE:N"):
            scale_out.parse_configs(bad)


@pytest.mark.slow
def test_scale_out_benchmark_quick(profiled_bundle, tmp_path):
    """A gunicorn worker and a Ray replica, really started, driven and stopped."""
    bundle, _ = profiled_bundle
    out = tmp_path / "scale_out.json"
    assert scale_out.main(["--bundle", str(bundle), "--configs", "gunicorn:1,ray:1", "--seconds", "0.5",
                           "--rounds", "1", "--clients", "2", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert [(run["engine"], run["replicas"]) for run in r["runs"]] == [("gunicorn", 1), ("ray", 1)]
    assert all(run["req_s"] > 0 and run["errors"] == 0 and run["backend"] == "litert" for run in r["runs"])
    assert r["ratios"]["ray1_over_gunicorn1"] > 0 and r["ratios"]["ray2_over_ray1"] is None


@pytest.mark.slow
def test_regime_map_quick(profiled_bundle, tmp_path, capsys):
    from benchmarks import regimes

    bundle, _ = profiled_bundle
    out = tmp_path / "regimes.json"
    # slow boards on slow links: few frames to simulate (phone-high on wifi took 110 s)
    assert regimes.main(["--bundle", str(bundle), "--devices", "pi-zero2", "pi3",
                         "--links", "3g-evdo", "lte", "--duration-s", "3", "--jobs", "1",
                         "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "headlines:" in printed
    r = json.loads(out.read_text())
    assert [d["name"] for d in r["devices"]] == ["pi-zero2", "pi3"]
    assert [lk["name"] for lk in r["links"]] == ["3g-evdo", "lte"]
    assert len(r["cells"]) == 4
    for cell in r["cells"]:
        assert {"model", "device", "link", "fps", "drop_pp"} <= set(cell)
        assert set(cell["fps"]) == set(regimes.POLICIES) == set(cell["drop_pp"])
        assert all(v >= 0 for v in cell["fps"].values())
    assert out.with_suffix(".png").stat().st_size > 10_000


def test_regime_map_refuses_unknown_classes(profiled_bundle, capsys):
    from benchmarks import regimes

    assert regimes.main(["--bundle", str(profiled_bundle[0]), "--devices", "nokia"]) == 2
    assert "unknown device class" in capsys.readouterr().err


@pytest.mark.slow
def test_fleet_sweep_quick(profiled_bundle, tmp_path, capsys):
    from benchmarks import fleet

    out = tmp_path / "fleet.json"
    assert fleet.main(["--bundle", str(profiled_bundle[0]), "--devices", "32", "--seconds", "5",
                       "--link", "wifi", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    sizes = sorted({p["devices"] for p in r["points"]})
    assert sizes == [8, 16, 32]
    for p in r["points"]:
        assert {"devices", "policy", "fleet_fps", "cloud_ms_per_frame", "slo_attainment",
                "drop_pp"} <= set(p)
    assert out.with_suffix(".png").stat().st_size > 10_000
    assert "fleet sweep" in capsys.readouterr().out


@pytest.mark.slow
def test_live_fleet_answers_every_frame_once(profiled_bundle, tmp_path):
    from benchmarks import fleet

    out = tmp_path / "live.json"
    assert fleet.main(["--bundle", str(profiled_bundle[0]), "--live", "2", "--seconds", "4",
                       "--mix", "rpi4:1", "--link", "wifi", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    assert r["devices"] == 2 and len(r["per_device"]) == 2
    assert r["no_frame_lost_or_duplicated"] is True
    assert r["fleet_fps_live"] > 0 and r["fleet_fps_sim"] > 0 and r["live_over_sim"] > 0
    assert all(d["frames"] > 0 for d in r["per_device"])
    from demo.link import FleetNet, TokenBucketLink, netns_available

    # as root, every device has a namespace and a shaped uplink of its own, removed afterwards
    assert r["uplinks"] == (FleetNet.kind if netns_available() else TokenBucketLink.kind)
    if netns_available():
        import os
        import subprocess

        listed = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        assert f"sf{os.getpid() % 10000}" not in listed, listed  # FleetNet's default name here


def test_the_regime_map_says_when_synthetic_traces_stand_in_for_recordings():
    from benchmarks import regimes
    from scheduler.links import LINKS

    recorded = next(name for name, link in LINKS.items() if link.recording is not None)
    unrecorded = [name for name, link in LINKS.items() if link.recording is None]
    assert regimes.trace_note([{"link": recorded, "trace": "recording /x/y.up"}]) is None
    if unrecorded:  # a class with no recording is synthetic by design: nothing to say
        assert regimes.trace_note([{"link": unrecorded[0], "trace": "synthetic seed 0"}]) is None
    note = regimes.trace_note([{"link": recorded, "trace": "synthetic seed 0"}])
    assert note is not None and recorded in note and "SPLITINFER_TRACES" in note
