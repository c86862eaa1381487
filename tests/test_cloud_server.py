"""The real server: `python -m cloud_runtime` in a subprocess, spoken to over HTTP.

Two servers start in parallel for the module: an eager one (token on the command line, a copy
of the tiny bundle with calibration.json, small limits) and a lazy one (token from the
environment, two bundles). Answers are checked against the Keras model run here. The API
contract tests (those on `eager`) run twice: on gunicorn and on Ray Serve (`--engine ray`,
two tail replicas), with the same arguments.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from splitinfer.bundle.keras_tail import load_keras_tail
from splitinfer.bundle.manifest import load_manifest
from splitinfer.codec import calibrate_ranges, pack, unpack

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
TOKEN = "eager-token-123"
LAZY_TOKEN = "lazy-token-456"
OTHER_SHA = "ab" * 32
MAX_BODY = 65536
READY_TIMEOUT_S = 150


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Server:
    proc: subprocess.Popen
    url: str
    token: str
    log: Path
    engine: str = "gunicorn"

    def session(self, token: str | None = "default") -> requests.Session:
        s = requests.Session()
        if token is not None:
            s.headers["Authorization"] = f"Bearer {self.token if token == 'default' else token}"
        return s

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def start(bundles, log: Path, *args: str, env=None, token: str) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "cloud_runtime", "--port", str(port), *args]
    for b in bundles:
        cmd += ["--bundle", str(b)]
    full_env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    full_env.pop("SPLITINFER_TOKEN", None)  # only what the test sets
    full_env.update(env or {})
    proc = subprocess.Popen(cmd, cwd=REPO, env=full_env, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT)
    engine = args[args.index("--engine") + 1] if "--engine" in args else "gunicorn"
    return Server(proc, f"http://127.0.0.1:{port}", token, log, engine)


def wait_ready(server: Server) -> float:
    """Seconds until /readyz said 200 (fails with the server log if it died or took too long)."""
    t0 = time.monotonic()
    s = server.session()
    while time.monotonic() - t0 < READY_TIMEOUT_S:
        if server.proc.poll() is not None:
            pytest.fail(f"server exited with {server.proc.returncode}:\n{server.log_text()[-3000:]}")
        try:
            if s.get(server.url + "/readyz", timeout=2).status_code == 200:
                return time.monotonic() - t0
        except (requests.ConnectionError, requests.Timeout):  # booting, or busy importing TF
            pass
        time.sleep(0.2)
    pytest.fail(f"server not ready after {READY_TIMEOUT_S} s:\n{server.log_text()[-3000:]}")


def stop(server: Server) -> None:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(30)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(10)
            pytest.fail("server ignored SIGTERM for 30 s")


# ---- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def local(tiny_bundle, tiny_model_path):
    """The Keras model and TFLite heads, run in this process, for the expected answers."""
    from splitinfer.quiet import import_tensorflow

    import_tensorflow()
    import keras

    from splitinfer.litert import HeadFiles

    manifest = load_manifest(tiny_bundle)
    model = keras.models.load_model(tiny_model_path, compile=False)
    files = HeadFiles(num_threads=1)
    heads = {s.name: files.head(tiny_bundle / s.head, s.head_signature) for s in manifest.splits if s.head}
    tails: dict = {}

    class Local:
        sha = manifest.model.sha256

        @staticmethod
        def probs(images: np.ndarray) -> np.ndarray:
            return np.asarray(model(images, training=False))

        @staticmethod
        def head(split: str, image: np.ndarray) -> np.ndarray:
            if split == "input":
                return image
            return heads[split](image[None].astype(np.float32))[0]

        @staticmethod
        def tail(split: str, x: np.ndarray) -> np.ndarray:
            if split not in tails:
                tails[split] = load_keras_tail(tiny_bundle / manifest.split(split).tail)
            return np.asarray(tails[split](x[None], training=False))[0]

        @staticmethod
        def payload(split: str, image: np.ndarray, bits: int, **kw) -> bytes:
            s = manifest.split(split)
            return pack(Local.head(split, image), bits, model_sha256=manifest.model.sha256,
                        split=split, split_index=s.index, **kw)

    Local.manifest = manifest
    return Local


def images(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, 32, 32, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def bundles(tiny_bundle, local, tmp_path_factory):
    """A copy of the tiny bundle with calibration.json, and a second model (another sha)."""
    root = tmp_path_factory.mktemp("cloud")
    calibrated = root / "tiny"
    shutil.copytree(tiny_bundle, calibrated)
    ranges = calibrate_ranges([local.head("res_add", im) for im in images(8, seed=1)], percentile=100)
    (calibrated / "calibration.json").write_text(json.dumps(
        {"version": 1, "model_sha256": local.sha, "splits": {"res_add": ranges.to_json()}}))
    other = root / "tiny_b"
    shutil.copytree(tiny_bundle, other)
    m = json.loads((other / "manifest.json").read_text())
    m["model"]["name"], m["model"]["sha256"] = "tiny_b", OTHER_SHA
    (other / "manifest.json").write_text(json.dumps(m))
    (other / "calibration.json").unlink(missing_ok=True)  # measured on the original sha
    return {"calibrated": calibrated, "other": other, "ranges": ranges}


READ_TIMEOUT_S = 3
EAGER_ARGS = ("--token", TOKEN, "--max-batch", "8", "--max-delay-ms", "20",
              "--max-body-bytes", str(MAX_BODY), "--read-timeout-s", str(READ_TIMEOUT_S))


def check_stopped_cleanly(server: Server, token: str) -> None:
    text = server.log_text()
    assert server.proc.returncode == 0, text[-2000:]
    assert "Traceback" not in text, text[-3000:]
    assert token not in text  # the token is never logged


@pytest.fixture(scope="module")
def servers(bundles, tmp_path_factory):
    logs = tmp_path_factory.mktemp("logs")
    eager = start([bundles["calibrated"]], logs / "eager.log", *EAGER_ARGS, token=TOKEN)
    # The eager server picks its tail backend (auto: LiteRT on this CPU), the lazy one serves
    # the Keras tails: every answer test below runs on one or the other.
    lazy = start([bundles["calibrated"], bundles["other"]], logs / "lazy.log", "--load", "lazy",
                 "--tail-backend", "tf",
                 env={"SPLITINFER_TOKEN": LAZY_TOKEN}, token=LAZY_TOKEN)
    try:
        ready = {"eager": wait_ready(eager), "lazy": wait_ready(lazy)}
        yield {"eager": eager, "lazy": lazy, "ready_s": ready}
    finally:
        stop(eager)
        stop(lazy)
    check_stopped_cleanly(eager, TOKEN)
    check_stopped_cleanly(lazy, LAZY_TOKEN)


@pytest.fixture(scope="module")
def ray_server(bundles, tmp_path_factory):
    """The eager server's arguments on Ray Serve, with two tail replicas."""
    log = tmp_path_factory.mktemp("logs") / "ray.log"
    server = start([bundles["calibrated"]], log, "--engine", "ray", "--replicas", "2",
                   *EAGER_ARGS, token=TOKEN)
    try:
        wait_ready(server)
        yield server
    finally:
        stop(server)
    check_stopped_cleanly(server, TOKEN)


@pytest.fixture(scope="module", params=["gunicorn", "ray"])
def eager(request, servers) -> Server:
    return servers["eager"] if request.param == "gunicorn" else request.getfixturevalue("ray_server")


# ---- answers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["input", "stem_bn", "res_add", "pw", "gap"])
def test_float_payload_answers_match_the_keras_model(eager, local, split):
    im = images(1, seed=10)[0]
    body = eager.session().post(eager.url + "/v1/infer?k=10", data=local.payload(split, im, 32)).json()
    expected = local.probs(im[None])[0]
    assert body["model"] == "tiny" and body["split"] == split and body["bits"] == 32
    assert [t["class"] for t in body["top_k"]][:3] == np.argsort(-expected)[:3].tolist()
    got = np.zeros(10)
    for t in body["top_k"]:
        got[t["class"]] = t["score"]
    np.testing.assert_allclose(got, expected, atol=2e-5)
    assert body["device"] in ("/CPU:0", "/GPU:0")


@pytest.mark.parametrize("split,bits,calibrated", [("pw", 8, False), ("stem_relu", 4, False),
                                                    ("res_add", 4, True)])
def test_quantized_payload_answers_match_the_tail_on_the_decoded_tensor(
        eager, local, bundles, split, bits, calibrated):
    im = images(1, seed=11)[0]
    ranges = bundles["ranges"] if calibrated else None
    data = local.payload(split, im, bits, ranges=ranges)
    body = eager.session().post(eager.url + "/v1/infer?k=10", data=data).json()
    expected = local.tail(split, unpack(data, ranges=ranges))
    got = np.zeros(10)
    for t in body["top_k"]:
        got[t["class"]] = t["score"]
    np.testing.assert_allclose(got, expected, atol=2e-5)


def test_image_endpoint_matches_the_keras_model(eager, local):
    im = images(1, seed=12)[0]
    buf = io.BytesIO()
    Image.fromarray(im.astype(np.uint8)).save(buf, format="PNG")
    resp = eager.session().post(eager.url + "/v1/infer/image?model=tiny&k=3", data=buf.getvalue())
    body = resp.json()
    assert resp.status_code == 200, body
    expected = local.probs(im[None])[0]
    assert [t["class"] for t in body["top_k"]] == np.argsort(-expected)[:3].tolist()
    assert body["top_k"][0]["score"] == pytest.approx(float(expected.max()), abs=2e-5)
    assert body["split"] == "input"


def test_concurrent_requests_are_batched(eager, local):
    clients, per_client = 16, 4
    ims = images(clients, seed=13)
    payloads = [local.payload("pw", im, 8) for im in ims]
    expected = [int(np.argmax(local.tail("pw", unpack(p)))) for p in payloads]
    answers: dict[int, list] = {}
    barrier = threading.Barrier(clients)

    def client(i):
        s = eager.session()
        barrier.wait()
        answers[i] = [s.post(eager.url + "/v1/infer?k=1", data=payloads[i], timeout=30)
                      for _ in range(per_client)]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    bodies = [(i, r.json()) for i, rs in answers.items() for r in rs]
    assert len(bodies) == clients * per_client
    for i, body in bodies:
        assert body["top_k"][0]["class"] == expected[i]
    sizes = [b["batch_size"] for _, b in bodies]
    assert max(sizes) > 1, sizes
    assert max(sizes) <= 8
    metrics = eager.session().get(eager.url + "/metrics").text
    assert 'splitinfer_batch_size_bucket{model="tiny",split="pw",le="8",pid="' in metrics
    # every answer reports the worker's load; under 16 concurrent clients it shows
    loads = [b["load"] for _, b in bodies]
    assert all(set(ld) == {"utilisation", "queue_ms", "batch_occupancy", "in_flight", "window_s"}
               for ld in loads)
    assert max(ld["in_flight"] for ld in loads) >= 1
    assert max(ld["utilisation"] for ld in loads) > 0
    assert max(ld["batch_occupancy"] for ld in loads) > 1 / 8
    header = answers[0][-1].headers["X-Splitinfer-Load"]
    assert header.startswith("utilisation=") and "in_flight=" in header


# ---- errors ----------------------------------------------------------------------------------


def _err(resp, status, code):
    assert resp.status_code == status, (resp.status_code, resp.text)
    body = resp.json()
    assert body["code"] == code and "Traceback" not in resp.text
    return body


def test_every_error_status_over_http_and_the_server_keeps_serving(eager, local):
    s = eager.session()
    url = eager.url
    im = images(1, seed=14)[0]
    good = local.payload("dw", im, 8)
    _err(s.post(url + "/v1/infer", data=b"\x00garbage"), 400, "bad_payload")
    _err(s.post(url + "/v1/infer", data=good[:-1]), 400, "bad_payload")
    _err(eager.session(token=None).get(url + "/v1/models"), 401, "unauthorized")
    _err(eager.session(token="wrong").post(url + "/v1/infer", data=good), 401, "unauthorized")
    _err(s.post(url + "/v1/infer", data=pack(np.zeros((8, 8, 8), np.float32), 8,
                                             model_sha256=local.sha, split="nope")), 404, "unknown_split")
    _err(s.post(url + "/v1/infer?model=nope", data=good), 404, "unknown_model")
    _err(s.get(url + "/v1/nothing"), 404, "not_found")
    _err(s.put(url + "/v1/infer", data=good), 405, "method_not_allowed")
    _err(s.post(url + "/v1/infer", data=pack(np.zeros((8, 8, 8), np.float32), 8,
                                             model_sha256=OTHER_SHA, split="dw")), 409, "model_mismatch")
    _err(s.post(url + "/v1/infer", data=good, headers={"X-Model-Sha256": OTHER_SHA}), 409,
         "model_mismatch")
    uncalibrated = local.payload("res_add", im, 4, ranges=calibrate_ranges(
        [local.head("res_add", im) * 2], percentile=100))
    _err(s.post(url + "/v1/infer", data=uncalibrated), 409, "calibration_mismatch")
    _err(s.post(url + "/v1/infer", data=b"\0" * (MAX_BODY + 1)), 413, "payload_too_large")
    small = io.BytesIO()
    Image.new("RGB", (31, 32)).save(small, format="PNG")
    body = _err(s.post(url + "/v1/infer/image", data=small.getvalue()), 400, "bad_request")
    assert "31x32" in body["error"] and "32x32" in body["error"]
    # still serving, same connection and a new one, and health never needs the token
    assert s.post(url + "/v1/infer", data=good, headers={"X-Model-Sha256": local.sha}).status_code == 200
    assert eager.session(token=None).get(url + "/healthz").json()["status"] == "ok"
    assert eager.proc.poll() is None
    metrics = s.get(url + "/metrics").text
    assert 'splitinfer_requests_total{endpoint="/v1/infer",status="409",pid="' in metrics


def test_oversized_bodies_get_their_413_not_a_reset(eager):
    """The server answers, then reads (and drops) a bounded amount of an oversized body before
    it closes, so the client reads the 413 instead of a reset; a new connection serves on.
    (On Ray, HAProxy keeps or closes the client's connection as it sees fit.)"""
    s = eager.session()
    for n in (MAX_BODY + 1, 2 * MAX_BODY, 16 * MAX_BODY):
        for _ in range(5):
            r = s.post(eager.url + "/v1/infer", data=b"\0" * n)
            _err(r, 413, "payload_too_large")
            if eager.engine == "gunicorn":  # HAProxy manages the client's connection itself
                assert r.headers["Connection"] == "close"  # never reused with its body half read
    r = eager.session(token="wrong").post(eager.url + "/v1/infer", data=b"\0" * 1000)
    _err(r, 401, "unauthorized")
    if eager.engine == "gunicorn":
        assert r.headers["Connection"] == "close"
    r = s.post(eager.url + "/v1/probe", data=b"\0" * 1000)  # read whole: the connection stays
    assert r.status_code == 200
    if eager.engine == "gunicorn":
        assert r.headers["Connection"] == "keep-alive"
    assert s.get(eager.url + "/healthz").json()["status"] == "ok"


def test_a_stalled_upload_gets_408_and_the_server_serves_on(eager, local):
    s = eager.session()
    host, port = eager.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f"POST /v1/infer HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {TOKEN}\r\n"
                     "Content-Length: 1000\r\n\r\n".encode() + b"x" * 10)  # then silence
        answer = b""
        while b"stalled" not in answer:  # the JSON error may come in a second segment
            chunk = sock.recv(4096)
            assert chunk, answer
            answer += chunk
    head = answer.split(b"\r\n\r\n")[0].decode().lower()
    assert head.startswith("http/1.1 408"), head
    if eager.engine == "gunicorn":  # behind HAProxy, HAProxy owns the client's connection
        assert "connection: close" in head, head
    assert f"stalled for {READ_TIMEOUT_S} s" in answer.decode()
    good = local.payload("pw", images(1, seed=16)[0], 8)
    assert s.post(eager.url + "/v1/infer", data=good).status_code == 200


@pytest.mark.parametrize("moment", ["Booting worker", "tails", "loaded tail", "worker ready"])
def test_sigterm_at_any_moment_of_start_up_stops_cleanly(tiny_bundle, tmp_path, moment):
    """Stopped while TensorFlow imports, as the first tail loads, between tails, or once
    serving: exit 0, no abort (a worker that exited with TensorFlow busy on its loader thread
    used to die of SIGABRT: 2 of 12 stops 4.5 s after start with the default model)."""
    from splitinfer.testing import CloudProcess

    cloud = CloudProcess(tiny_bundle, tmp_path / "cloud.log")
    cloud.launch()
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while moment not in cloud.log_text():  # an event in the log, not a guessed delay
            assert cloud.alive() and time.monotonic() < deadline, cloud.log_text()[-2000:]
            time.sleep(0.02)
    finally:
        code = cloud.stop(timeout=60)
    log = cloud.log_text()
    assert code == 0, log[-2000:]
    for bad in ("SIGABRT", "terminate called", "was sent SIGKILL", "Traceback"):
        assert bad not in log, log[-2000:]


def test_models_and_readyz_say_what_is_served_and_where(eager):
    s = eager.session()
    models = s.get(eager.url + "/v1/models").json()
    (m,) = models["models"]
    assert m["name"] == "tiny" and m["input_shape"] == [32, 32, 3] and len(m["splits"]) == 7
    assert [sp["name"] for sp in m["splits"] if sp["calibrated"]] == ["res_add"]
    ready = s.get(eager.url + "/readyz").json()
    assert ready["ready"] and ready["load"] == "eager" and ready["tails_loaded"] == 7
    assert ready["device"] == models["device"] == m["device"]
    assert models["backend"] == "litert" and models["backend_chosen_because"].startswith("auto: no GPU")
    engine = "in-process"  # gunicorn, and Ray's fused layout, run tails in the process that answers
    assert models["engine"] == ready["engine"] == engine
    metrics = s.get(eager.url + "/metrics").text
    assert f'splitinfer_backend_info{{backend="litert",device="/CPU:0",engine="{engine}"' in metrics
    assert "backend litert (auto: no GPU" in eager.log_text()  # the start-up line says it too


def test_the_lazy_server_serves_keras_tails_when_asked(servers):
    lazy = servers["lazy"]
    models = lazy.session().get(lazy.url + "/v1/models").json()
    assert models["backend"] == "tf" and models["backend_chosen_because"] == "asked for"


def test_lazy_server_loads_on_first_use_and_serves_two_models(servers, local):
    lazy = servers["lazy"]
    s = lazy.session()
    _err(lazy.session(token=None).get(lazy.url + "/readyz"), 401, "unauthorized")
    ready = s.get(lazy.url + "/readyz").json()
    assert ready["ready"] and ready["load"] == "lazy" and ready["tails_total"] == 14
    im = images(1, seed=15)[0]
    head = local.head("pw", im)
    for sha, name in ((local.sha, "tiny"), (OTHER_SHA, "tiny_b")):
        data = pack(head, 32, model_sha256=sha, split="pw", split_index=local.manifest.split("pw").index)
        body = s.post(lazy.url + "/v1/infer", data=data).json()
        assert body["model"] == name
        assert body["top_k"][0]["class"] == int(np.argmax(local.probs(im[None])[0]))
    loads = s.get(lazy.url + "/readyz").json()["loads"]
    assert sorted(loads) == [f"tiny@{local.sha[:12]}/pw", f"tiny_b@{OTHER_SHA[:12]}/pw"]
    assert all(v["lazy"] for v in loads.values())


def test_the_edge_gets_the_same_answers_from_both_engines(servers, ray_server, profiled_bundle, tmp_path):
    """`python -m edge_runtime --policy fixed` on 200 frames, once against each engine (float16
    payloads: the edge's profiled bundle has its own calibration, which the servers lack)."""
    from tests.conftest import run_module, write_image_folder

    frames = write_image_folder(tmp_path / "frames", 200, seed=21)
    answers = {}
    for server in (servers["eager"], ray_server):
        out = tmp_path / f"{server.engine}.jsonl"
        r = run_module("edge_runtime", "--bundle", str(profiled_bundle[0]), "--cloud", server.url,
                       "--policy", "fixed", "--split", "pw", "--bits", "float16", "--images", str(frames),
                       "--token", TOKEN, "--jsonl", str(out), timeout=300)
        assert r.returncode == 0, r.stderr[-2000:]
        lines = [json.loads(x) for x in out.read_text().splitlines()]
        frames_only = [x for x in lines if not x.get("summary")]
        assert sorted(x["frame"] for x in frames_only) == list(range(200))  # none lost or doubled
        assert all(x["where"] == "split" and not x["fallback"] for x in frames_only)
        answers[server.engine] = {x["frame"]: x["top1"] for x in frames_only}
    agree = np.mean([answers["gunicorn"][i] == answers["ray"][i] for i in range(200)])
    assert agree >= 0.99, agree
