"""The Ray Serve engine: its ASGI bridge and options (fast), and a real two-node cluster (slow).

The HTTP contract on `--engine ray` is checked in test_cloud_server.py, which runs its API
tests on both engines.
"""
from __future__ import annotations

import asyncio
import json
import threading

import numpy as np
import pytest
import requests
from flask import Flask, jsonify, request

from cloud_runtime.asgi import BodyLimits, WSGIOnASGI, receive_body, wsgi_environ
from cloud_runtime.config import ConfigError
from cloud_runtime.connection import BodyTimedOut
from cloud_runtime.ray_engine import RayOptions
from tests.conftest import run_module

LIMITS = BodyLimits(max_bytes=100, read_timeout_s=0.2, deadline_s=1.0)


def _messages(*chunks: bytes, stall_after: int | None = None):
    """An ASGI `receive` giving `chunks`, then (if `stall_after`) never another message."""
    queue = list(chunks)

    async def receive():
        if stall_after is not None and len(chunks) - len(queue) >= stall_after:
            await asyncio.Event().wait()  # a client that stopped sending
        body = queue.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(queue)}

    return receive


def _receive(receive, declared=None, limits=LIMITS):
    return asyncio.run(receive_body(receive, limits, declared))


# ---- the ASGI bridge: body limits ---------------------------------------------------------------


def test_a_body_in_chunks_arrives_whole():
    body = _receive(_messages(b"ab", b"cd", b"e"))
    assert body.data == b"abcde" and body.timed_out is None and not body.too_large


def test_a_declared_length_over_the_limit_is_refused_unread():
    def never_called():
        raise AssertionError("read a body it should refuse from its length")

    body = _receive(never_called, declared=101)
    assert body.too_large and body.data == b""


def test_a_chunked_body_past_the_limit_stops_reading():
    body = _receive(_messages(b"x" * 60, b"x" * 60, b"x"))
    assert body.too_large


def test_a_stalled_body_times_out_on_the_read_timeout():
    body = _receive(_messages(b"ab", b"cd", stall_after=1))
    assert body.data == b"ab"
    assert body.timed_out is not None and not body.timed_out.deadline
    assert body.timed_out.seconds == LIMITS.read_timeout_s


def test_a_trickled_body_times_out_on_the_deadline():
    limits = BodyLimits(max_bytes=10_000, read_timeout_s=0.3, deadline_s=0.5)

    async def trickle():
        await asyncio.sleep(0.1)  # each byte well within the stall timeout
        return {"type": "http.request", "body": b"x", "more_body": True}

    body = _receive(trickle, limits=limits)
    assert body.timed_out is not None and body.timed_out.deadline
    assert 1 <= len(body.data) <= 6


def test_environ_follows_pep3333():
    scope = {"type": "http", "method": "POST", "path": "/api/v1/infer", "root_path": "/api",
             "query_string": b"k=3", "headers": [(b"content-type", b"application/octet-stream"),
                                                 (b"x-model-sha256", b"ab"), (b"accept", b"a"),
                                                 (b"accept", b"b"), (b"transfer-encoding", b"chunked")],
             "server": ("127.0.0.1", 8000), "client": ("10.0.0.1", 5555), "scheme": "https"}
    body = _receive(_messages(b"abc"))
    env = wsgi_environ(scope, body, LIMITS)
    assert env["PATH_INFO"] == "/v1/infer" and env["SCRIPT_NAME"] == "/api"
    assert env["QUERY_STRING"] == "k=3" and env["CONTENT_LENGTH"] == "3"
    assert env["HTTP_X_MODEL_SHA256"] == "ab" and env["HTTP_ACCEPT"] == "a,b"
    assert env["CONTENT_TYPE"] == "application/octet-stream" and "HTTP_TRANSFER_ENCODING" not in env
    assert env["wsgi.url_scheme"] == "https" and env["wsgi.input"].read() == b"abc"


# ---- the ASGI bridge: a Flask app behind it ---------------------------------------------------


def _echo_app() -> Flask:
    app = Flask("echo")
    app.config["MAX_CONTENT_LENGTH"] = LIMITS.max_bytes

    @app.post("/echo")
    def echo():
        try:
            data = request.stream.read()
        except BodyTimedOut as e:  # the bridge raises it once the bytes that came run out
            return jsonify(error=type(e).__name__), 408
        return jsonify(n=len(data), k=request.args.get("k"))

    return app


def _call(app, method, path, receive, headers=()):
    scope = {"type": "http", "method": method, "path": path, "query_string": b"k=2",
             "headers": list(headers)}
    sent = []

    async def send(message):
        sent.append(message)

    bridge = WSGIOnASGI(app, LIMITS, threads=2)
    try:
        asyncio.run(bridge(scope, receive, send))
    finally:
        bridge.close()
    start, body = sent
    headers = {k.decode(): v.decode() for k, v in start["headers"]}
    return start["status"], headers, body["body"]


def test_the_bridge_runs_a_flask_app_and_refuses_what_the_limits_stop():
    app = _echo_app()
    status, _, body = _call(app, "POST", "/echo", _messages(b"abc", b"de"))
    assert status == 200 and json.loads(body) == {"n": 5, "k": "2"}
    status, headers, _ = _call(app, "POST", "/echo", _messages(b"x" * 101),
                               headers=[(b"content-length", b"101")])
    assert status == 413 and headers["connection"] == "close"
    status, headers, body = _call(app, "POST", "/echo", _messages(b"ab", b"cd", stall_after=1))
    assert status == 408 and json.loads(body) == {"error": "BodyTimedOut"}
    assert headers["connection"] == "close"
    status, _, _ = _call(app, "GET", "/nothing", _messages(b""))
    assert status == 404


# ---- options and the command line -------------------------------------------------------------


@pytest.mark.parametrize("kwargs,fragment", [
    ({"replicas": 0}, "--replicas must be >= 1"),
    ({"min_replicas": 1}, "--max-replicas"),
    ({"min_replicas": 3, "max_replicas": 2}, "--max-replicas"),
    ({"max_replicas": 2, "target_ongoing_requests": 0}, "--target-ongoing-requests"),
    ({"max_models_per_replica": 0}, "--max-models-per-replica"),
    ({"cpus_per_replica": 0}, "--cpus-per-replica"),
    ({"proxy_location": "moon"}, "--proxy-location"),
    ({"layout": "both"}, "--layout"),
    ({"http_proxy": "nginx"}, "--http-proxy"),
    ({"http_proxy": "haproxy", "address": "10.0.0.1:6379"}, "RAY_SERVE_ENABLE_HA_PROXY=1"),
])
def test_ray_options_are_checked(kwargs, fragment):
    with pytest.raises(ConfigError, match=fragment):
        RayOptions(**kwargs).check()


def test_scaling_is_fixed_or_autoscaled():
    assert RayOptions(replicas=3).scaling() == {"num_replicas": 3}
    auto = RayOptions(min_replicas=1, max_replicas=4, target_ongoing_requests=6).scaling()
    assert auto == {"autoscaling_config": {"min_replicas": 1, "max_replicas": 4, "initial_replicas": 1,
                                           "target_ongoing_requests": 6}}


def test_the_proxy_is_haproxy_only_where_it_can_run():
    assert RayOptions().proxy_for(tls=False) == "haproxy"
    assert RayOptions().proxy_for(tls=True) == "ray"  # Ray's proxy terminates TLS
    assert RayOptions(address="auto").proxy_for(tls=False) == "ray"  # the cluster decides
    assert RayOptions(http_proxy="ray").proxy_for(tls=False) == "ray"
    with pytest.raises(ConfigError, match="TLS"):
        RayOptions(http_proxy="haproxy").proxy_for(tls=True)


@pytest.mark.parametrize("args,message", [
    (["--replicas", "0"], "--replicas must be >= 1. Received: 0"),
    (["--workers", "3"], "--workers is gunicorn's; with --engine ray use --replicas. Received: --workers 3"),
])
def test_bad_ray_options_fail_in_one_line_before_ray_starts(tiny_bundle, args, message):
    r = run_module("cloud_runtime", "--engine", "ray", "--bundle", str(tiny_bundle), *args, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip().splitlines() == [f"python -m cloud_runtime: error: {message}"]


# ---- a real two-node cluster ------------------------------------------------------------------


@pytest.mark.slow
def test_a_two_node_cluster_spreads_replicas_and_answers_identically(tiny_bundle, tmp_path):
    """Two Ray nodes on this machine, one CPU each: the two tail replicas (one CPU each) must
    land one per node, and the same payload gets the same answer from both. The split layout
    (ingress, then tail replicas batching with @serve.batch and holding tails with
    @serve.multiplexed) behind Ray's Python proxy, as on a cluster not started with HAProxy."""
    from ray.cluster_utils import Cluster

    from splitinfer.bundle.manifest import load_manifest
    from splitinfer.codec import pack
    from splitinfer.testing import CloudProcess

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cloud = None
    try:
        cluster.add_node(num_cpus=1)
        cloud = CloudProcess(tiny_bundle, tmp_path / "cloud.log", [
            "--engine", "ray", "--layout", "split", "--ray-address", cluster.address, "--replicas", "2",
            "--proxy-location", "head"])
        cloud.start(timeout=240)
        manifest = load_manifest(tiny_bundle)
        split = manifest.split("pw")
        x = np.random.default_rng(3).normal(size=split.shape).astype(np.float32)
        payload = pack(x, 8, model_sha256=manifest.model.sha256, split="pw", split_index=split.index)
        answers: dict[str, set] = {}
        lock = threading.Lock()

        def client():
            s = requests.Session()
            for _ in range(40):
                body = s.post(cloud.url + "/v1/infer?k=10", data=payload, timeout=60).json()
                with lock:
                    answers.setdefault(body["replica"], set()).add(json.dumps(body["top_k"]))
                    if len(answers) == 2:
                        return

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(answers) == 2, f"only {sorted(answers)} answered"
        nodes = {replica.split(":")[0] for replica in answers}
        assert len(nodes) == 2, answers.keys()  # one replica per node
        (one, other) = answers.values()
        assert len(one) == 1 and one == other  # identical answers, bit for bit in the JSON
    finally:
        if cloud is not None:
            code = cloud.stop(timeout=60)
            log = cloud.log.read_text(errors="replace")
            assert code == 0 and "Traceback" not in log, log[-3000:]
        cluster.shutdown()
