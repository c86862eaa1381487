"""Faults mid-stream: the real edge runtime (fixed split and `auto`) against the real server.

One scenario (benchmarks/faults.py, shorter) runs for the module: the link drops to zero for
10 s, the server answers 503, then 500, hangs past the SLO, and is killed and restarted. The tests
check what it recorded: every frame answered exactly once, each fault seen (fallbacks) and left
behind (onloading again), no frame waiting for a dead or hung cloud. The fault endpoint itself is
tested in-process (no TensorFlow).
"""
from __future__ import annotations

import threading
import time

import pytest

from benchmarks.faults import (FAULTS, LINK_MBPS, Scenario, run_scenario,
                               slow_device_copy)
from cloud_runtime import ServerConfig
from demo.link import TokenBucketLink
from scheduler.scheduler import SchedulerParams
from scheduler.traces import outage
from splitinfer.testing import wait_until
from splitinfer.testing import CloudProcess
from tests.test_cloud_app import build

POLICIES = ("fixed", "auto")
SCENARIO = Scenario(fps=20.0, slo_ms=500.0, outage_s=10.0, fault_s=2.5, hang_s=3.0, dead_s=2.0,
                    recover_timeout_s=20.0, settle_s=0.5)
# Retries back off up to backoff_max_s; the first one after that lands within a few more seconds.
RECOVERY_BOUND_S = SchedulerParams().backoff_max_s + 4.0


@pytest.fixture(scope="module")
def scenario(profiled_bundle, tmp_path_factory):  # noqa: F811
    root = tmp_path_factory.mktemp("faults")
    bundle = slow_device_copy(profiled_bundle[0], root / "bundle")
    sc = SCENARIO
    link = TokenBucketLink(outage(LINK_MBPS, sc.warmup_s, sc.warmup_s + sc.outage_s, 900.0))
    cloud = CloudProcess(bundle, root / "cloud.log", ["--fault-injection"])
    cloud.start()
    try:
        report = run_scenario(cloud, bundle, link, sc, log=lambda *a: None)
        alive_after = cloud.alive()
    finally:
        cloud.kill()
    return {"report": report, "log": cloud.log_text(), "alive_after": alive_after}


def _table(report: dict) -> str:
    return "\n".join(f"{p}/{f}: {x}" for p, r in report["policies"].items()
                     for f, x in r["faults"].items()) + f"\nnotes: {report['notes']}"


@pytest.mark.slow
@pytest.mark.parametrize("policy", POLICIES)
def test_every_frame_is_answered_exactly_once(scenario, policy):
    r = scenario["report"]["policies"][policy]
    assert r["error"] is None
    assert r["frames_sent"] >= 300
    assert r["duplicates"] == 0 and r["missing"] == 0, r
    assert r["frames_answered"] == r["frames_sent"]
    assert r["returned_in_order"]


@pytest.mark.slow
@pytest.mark.parametrize("fault", FAULTS)
@pytest.mark.parametrize("policy", POLICIES)
def test_each_fault_falls_back_and_onloading_resumes(scenario, policy, fault):
    report = scenario["report"]
    x = report["policies"][policy]["faults"][fault]
    assert x["onloaded_before"] > 0, f"{policy} was not onloading before {fault}:\n{_table(report)}"
    assert x["fallbacks"] > 0, f"{fault} went unnoticed by {policy}:\n{_table(report)}"
    back = x["back_to_onloading_s"]
    assert back is not None and back <= RECOVERY_BOUND_S, (
        f"{policy} onloaded {back} s after {fault} ended:\n{_table(report)}")


@pytest.mark.slow
@pytest.mark.parametrize("policy", POLICIES)
def test_no_frame_waits_for_a_cut_link_or_a_hung_server(scenario, policy):
    faults = scenario["report"]["policies"][policy]["faults"]
    # The runtime gives up on the upload and finishes the frame on the device instead.
    assert faults["hang"]["max_latency_ms"] < 1e3 * SCENARIO.hang_s
    assert faults["link_zero"]["max_latency_ms"] < 1e3 * SCENARIO.outage_s / 2
    for name in ("error_503", "error_500", "kill_restart"):  # fast failures
        assert faults[name]["max_latency_ms"] < 2e3, (name, faults[name])


@pytest.mark.slow
def test_the_server_took_the_faults_and_came_back_clean(scenario):
    report = scenario["report"]
    by_name = {f["name"]: f for f in report["faults"]}
    assert [f["name"] for f in report["faults"]] == list(FAULTS)
    for mode in ("error_503", "error_500", "hang"):
        assert by_name[mode]["requests_hit"] > 0, by_name[mode]
    assert by_name["kill_restart"]["restart_to_ready_s"] > 0
    assert not report["notes"], report["notes"]
    assert scenario["alive_after"]
    assert "Traceback" not in scenario["log"]
    assert "fault injection is ON" in scenario["log"]


# ---- the fault endpoint, in-process ---------------------------------------------------------


@pytest.fixture
def fault_app(tmp_path):
    services = []

    def make(token: str = "", faults: bool = True):
        app, service, _ = build(tmp_path / f"app{len(services)}", token=token, fault_injection=faults)
        services.append(service)
        assert service.wait_ready(10)
        return app.test_client()

    yield make
    for service in services:
        service.close()


def test_fault_endpoint_exists_only_when_enabled_and_needs_the_token(fault_app):
    assert fault_app(faults=False).post("/v1/_faults", json={"mode": "off"}).status_code == 404
    assert ServerConfig().fault_injection is False
    from cloud_runtime.serve import build_parser

    assert build_parser().parse_args(["--bundle", "x"]).fault_injection is False
    client = fault_app(token="s3cret")
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        r = client.post("/v1/_faults", json={"mode": "error_500", "seconds": 5}, headers=headers)
        assert r.status_code == 401 and r.json["code"] == "unauthorized"
    ok = {"Authorization": "Bearer s3cret"}
    assert client.get("/v1/_faults", headers=ok).json["mode"] == "off"


@pytest.mark.parametrize("body", [{"mode": "explode", "seconds": 1}, {"mode": "hang"},
                                  {"mode": "hang", "seconds": 0}, {"mode": "hang", "seconds": 1e6},
                                  {"mode": "error_503", "seconds": "5"},
                                  {"mode": "error_503", "seconds": True}, [1, 2], "off"])
def test_fault_endpoint_rejects_bad_requests(fault_app, body):
    r = fault_app().post("/v1/_faults", json=body)
    assert r.status_code == 400 and r.json["code"] == "bad_request"


def test_faults_answer_hang_and_end_by_themselves(fault_app):
    client = fault_app()
    assert client.post("/v1/_faults", json={"mode": "error_503", "seconds": 30}).json["mode"] == "error_503"
    r = client.post("/v1/infer", data=b"x")
    assert r.status_code == 503 and r.headers["Retry-After"] == "1"
    assert r.json["code"] == "injected_unavailable"
    assert client.get("/healthz").status_code == 200 and client.get("/readyz").status_code == 200
    client.post("/v1/_faults", json={"mode": "error_500", "seconds": 0.3})
    assert client.post("/v1/infer/image", data=b"x").status_code == 500
    # the fault ends by itself: back to the ordinary answer
    assert wait_until(lambda: client.get("/v1/_faults").json["mode"] == "off", 10)
    assert client.post("/v1/infer", data=b"x").json["code"] == "bad_payload"
    client.post("/v1/_faults", json={"mode": "hang", "seconds": 30})
    done = {}
    t = threading.Thread(target=lambda: done.update(r=client.post("/v1/infer", data=b"x")))
    t0 = time.monotonic()
    hits_before = client.get("/v1/_faults").json["hits"]
    t.start()
    assert wait_until(lambda: client.get("/v1/_faults").json["hits"] != hits_before, 10)
    assert t.is_alive()  # it reached the fault and hangs there
    client.post("/v1/_faults", json={"mode": "off"})
    t.join(5)
    assert not t.is_alive() and time.monotonic() - t0 < 5
    assert done["r"].json["code"] == "bad_payload"  # released, then served normally
    hits = client.get("/v1/_faults").json["hits"]
    assert hits == {"error_503": 1, "error_500": 1, "hang": 1}
