"""The HTTP layer with Flask's test client: routing, answers, every error, auth, batching.

A fake backend (numpy, no TensorFlow) and a fake bundle (a manifest and empty files) keep these
tests fast; tests/test_cloud_server.py runs the real server on a real bundle.
"""
from __future__ import annotations

import io
import json
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cloud_runtime import ServerConfig, create_app
from cloud_runtime.backend import LoadTiming, TailBackend
from splitinfer.bundle.files import write_json_atomic
from splitinfer.testing import wait_until
from splitinfer.bundle.manifest import Manifest, ModelInfo, Split
from splitinfer.codec import calibrate_ranges, pack

REPO = Path(__file__).resolve().parents[1]
SHA_A = "a1" * 32
SHA_B = "b2" * 32
CLASSES = 10
LABELS = tuple(f"class-{i}" for i in range(CLASSES))
SPLITS = {"input": (8, 8, 3), "mid": (4, 4, 6), "vec": (12,)}


def make_bundle(root: Path, name: str = "fake", sha: str = SHA_A, labels=LABELS,
                calibration: dict | None = None) -> Path:
    """A bundle directory the registry accepts: manifest.json plus empty referenced files."""
    root.mkdir(parents=True, exist_ok=True)
    splits = []
    for i, (split, shape) in enumerate(SPLITS.items()):
        head = None if split == "input" else f"heads/{split}.tflite"
        splits.append(Split(name=split, index=i, layer=split, shape=shape, dtype="float32",
                            head=head, tail=f"tails/{split}.keras", head_flops=0, tail_flops=1))
    manifest = Manifest(
        model=ModelInfo(name=name, sha256=sha, input_shape=SPLITS["input"], output_shape=(CLASSES,),
                        labels=tuple(labels)),
        full="full.tflite", full_flops=1, splits=tuple(splits))
    for rel in ["full.tflite"] + [s.tail for s in splits] + [s.head for s in splits if s.head]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    write_json_atomic(root / "manifest.json", manifest.to_dict())
    if calibration is not None:
        write_json_atomic(root / "calibration.json", {  # as converter.profile writes it
            "version": 1, "model_sha256": sha,
            "splits": {k: r.to_json() for k, r in calibration.items()}})
    return root


def fake_scores(batch: np.ndarray) -> np.ndarray:
    """Deterministic (B, CLASSES) 'probabilities' that depend on every input value."""
    flat = batch.reshape(batch.shape[0], -1).astype(np.float64)
    w = np.cos(np.arange(flat.shape[1])[:, None] * (np.arange(CLASSES)[None, :] + 1.0))
    logits = flat @ w
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


class FakeBackend(TailBackend):
    name = "fake"

    def __init__(self, start_gate: threading.Event | None = None,
                 run_gate: threading.Event | None = None, fail: str | None = None):
        self.start_gate, self.run_gate, self.fail = start_gate, run_gate, fail
        self.started = False
        self.loaded: set[str] = set()
        self.batches: list[tuple[str, int]] = []

    def start(self):
        if self.start_gate is not None:
            self.start_gate.wait(10)
        self.started = True

    @property
    def device(self):
        return "/FAKE:0" if self.started else None

    def load(self, tail):
        if tail.key in self.loaded:
            return LoadTiming(0.0, 0.0)
        self.loaded.add(tail.key)
        return LoadTiming(0.002, 0.001)

    def is_loaded(self, tail):
        return tail.key in self.loaded

    def run(self, tail, batch):
        self.batches.append((tail.split, batch.shape[0]))
        if self.run_gate is not None:
            self.run_gate.wait(10)
        if self.fail == "raise":
            raise RuntimeError("GPU fell off the bus")
        if self.fail == "rows":
            return fake_scores(batch)[:-1]
        return fake_scores(batch)


def build(tmp_path, backend=None, bundles=None, **overrides):
    bundles = bundles or [make_bundle(tmp_path / "fake")]
    overrides.setdefault("token", "")  # not whatever SPLITINFER_TOKEN the shell has
    config = ServerConfig(bundles=tuple(str(b) for b in bundles), **overrides)
    backend = backend or FakeBackend()
    app = create_app(config, backend=backend)
    service = app.extensions["splitinfer"]
    return app, service, backend


@pytest.fixture
def served(tmp_path):
    app, service, backend = build(tmp_path, max_delay_ms=0.0)
    assert service.wait_ready(5)
    yield app, service, backend
    service.close()


def payload(split="mid", bits=32, sha=SHA_A, seed=0, shape=None, **kw):
    x = np.random.default_rng(seed).normal(size=shape or SPLITS[split]).astype(np.float32)
    index = list(SPLITS).index(split) if split in SPLITS else None
    return x, pack(x, bits, model_sha256=sha, split=split, split_index=index, **kw)


def expect_error(resp, status, code, *words):
    assert resp.status_code == status, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["code"] == code and isinstance(body["error"], str)
    assert "Traceback" not in body["error"]
    for w in words:
        assert w in body["error"], body["error"]
    return body


# ---- happy paths ---------------------------------------------------------------------------


def test_health_ready_and_models(served):
    app, service, _ = served
    c = app.test_client()
    assert c.get("/healthz").get_json()["status"] == "ok"
    ready = c.get("/readyz")
    assert ready.status_code == 200
    r = ready.get_json()
    assert r["ready"] and r["device"] == "/FAKE:0" and r["load"] == "eager"
    assert r["tails_loaded"] == r["tails_total"] == 3
    models = c.get("/v1/models").get_json()
    (m,) = models["models"]
    assert m["name"] == "fake" and m["sha256"] == SHA_A and m["device"] == "/FAKE:0"
    assert m["input_shape"] == [8, 8, 3] and m["labels"] == list(LABELS)
    assert [(s["name"], s["shape"]) for s in m["splits"]] == [(k, list(v)) for k, v in SPLITS.items()]
    assert models["batching"]["buckets"] == [1, 2, 4, 8, 16, 32]


@pytest.mark.parametrize("split,bits", [("mid", 32), ("mid", 4), ("vec", 16), ("input", 8)])
def test_infer_answers_top_k_of_the_tail_output(served, split, bits):
    app, _, _ = served
    x, data = payload(split, bits)
    resp = app.test_client().post("/v1/infer?k=3", data=data)
    assert resp.status_code == 200, resp.get_json()
    body = resp.get_json()
    from splitinfer.codec import unpack

    expected = fake_scores(unpack(data)[None])[0]
    order = np.argsort(-expected)[:3]
    assert [t["class"] for t in body["top_k"]] == order.tolist()
    assert [t["score"] for t in body["top_k"]] == pytest.approx(expected[order].tolist(), rel=1e-6)
    assert body["label"] == LABELS[order[0]]
    assert (body["model"], body["split"], body["bits"], body["device"]) == ("fake", split, bits, "/FAKE:0")
    for key in ("decode_ms", "queue_ms", "tail_ms", "total_ms"):
        assert body[key] >= 0
    assert body["batch_size"] == 1 and body["total_ms"] >= body["tail_ms"]


def test_default_k_is_5_and_batch_axis_of_one_is_accepted(served):
    app, _, _ = served
    _, data = payload("mid", shape=(1, 4, 4, 6))
    body = app.test_client().post("/v1/infer", data=data).get_json()
    assert len(body["top_k"]) == 5


def test_no_label_when_the_manifest_has_none(tmp_path):
    app, service, _ = build(tmp_path, bundles=[make_bundle(tmp_path / "nl", labels=())])
    assert service.wait_ready(5)
    body = app.test_client().post("/v1/infer", data=payload()[1]).get_json()
    assert "label" not in body and len(body["top_k"]) == 5
    service.close()


def test_x_model_sha256_header_must_match(served):
    app, _, _ = served
    c = app.test_client()
    _, data = payload()
    assert c.post("/v1/infer", data=data, headers={"X-Model-Sha256": SHA_A}).status_code == 200
    expect_error(c.post("/v1/infer", data=data, headers={"X-Model-Sha256": SHA_B}),
                 409, "model_mismatch", "X-Model-Sha256")
    expect_error(c.post("/v1/infer", data=data, headers={"X-Model-Sha256": "zz"}),
                 400, "bad_request", "hex")


def test_calibrated_payloads_use_the_bundle_ranges(tmp_path):
    rng = np.random.default_rng(1)
    ranges = calibrate_ranges([rng.normal(size=SPLITS["mid"]) for _ in range(4)], percentile=100)
    bundle = make_bundle(tmp_path / "cal", calibration={"mid": ranges})
    app, service, _ = build(tmp_path, bundles=[bundle])
    assert service.wait_ready(5)
    c = app.test_client()
    assert c.get("/v1/models").get_json()["models"][0]["splits"][1]["calibrated"] is True
    x, data = payload("mid", 4, ranges=ranges)
    body = c.post("/v1/infer", data=data).get_json()
    from splitinfer.codec import unpack

    assert body["top_k"][0]["class"] == int(np.argmax(fake_scores(unpack(data, ranges=ranges)[None])))
    other = calibrate_ranges([rng.normal(size=SPLITS["mid"]) * 3], percentile=100)
    expect_error(c.post("/v1/infer", data=payload("mid", 4, ranges=other)[1]),
                 409, "calibration_mismatch", "does not match the served calibration")
    vec_ranges = calibrate_ranges([rng.normal(size=(12,))], percentile=100)
    expect_error(c.post("/v1/infer", data=payload("vec", 4, ranges=vec_ranges)[1]),
                 409, "calibration_mismatch", "no calibration for split 'vec'")
    service.close()


def test_allocated_payloads_use_the_bundle_allocation(tmp_path):
    from splitinfer.codec import MIXED_BITS, ChannelRanges, pack, unpack

    rng = np.random.default_rng(2)
    ranges = calibrate_ranges([rng.normal(size=SPLITS["mid"]) for _ in range(4)], percentile=100)
    c_count = ranges.channels
    allocation = ChannelRanges(lo=ranges.lo, hi=ranges.hi, bits=rng.integers(0, 5, c_count))
    bundle = make_bundle(tmp_path / "alloc", calibration={"mid": ranges})
    data = json.loads((bundle / "calibration.json").read_text())  # as converter.profile writes it
    data["splits"]["mid"] = {"ranges": ranges.to_json(), "allocated": allocation.to_json()}
    (bundle / "calibration.json").write_text(json.dumps(data))
    app, service, _ = build(tmp_path, bundles=[bundle])
    assert service.wait_ready(5)
    c = app.test_client()
    split = c.get("/v1/models").get_json()["models"][0]["splits"][1]
    assert split["calibrated"] is True and split["allocated"] is True
    x = rng.normal(size=SPLITS["mid"]).astype(np.float32)
    sent = pack(x, MIXED_BITS, ranges=allocation, model_sha256=SHA_A, split_index=1)
    body = c.post("/v1/infer", data=sent).get_json()
    assert body["bits"] == MIXED_BITS
    assert body["top_k"][0]["class"] == int(np.argmax(fake_scores(unpack(sent, ranges=allocation)[None])))
    # the plain calibration still decodes its own payloads
    assert c.post("/v1/infer", data=payload("mid", 4, ranges=ranges)[1]).status_code == 200
    wrong = ChannelRanges(lo=ranges.lo, hi=ranges.hi, bits=(allocation.bits + 1) % 5)
    expect_error(c.post("/v1/infer", data=pack(x, MIXED_BITS, ranges=wrong, model_sha256=SHA_A,
                                                split_index=1)),
                 409, "calibration_mismatch", "does not match the served calibration")
    vec = ChannelRanges(lo=np.zeros(12), hi=np.ones(12), bits=np.ones(12, int))
    expect_error(c.post("/v1/infer", data=pack(rng.normal(size=(12,)), MIXED_BITS, ranges=vec,
                                                model_sha256=SHA_A, split_index=2)),
                 409, "calibration_mismatch", "no allocation for split 'vec'")
    service.close()


def test_calibration_of_another_model_is_refused_at_start(tmp_path):
    from splitinfer.bundle.manifest import BundleError

    ranges = calibrate_ranges([np.ones(SPLITS["mid"])], percentile=100)
    bundle = make_bundle(tmp_path / "stale", calibration={"mid": ranges})
    data = json.loads((bundle / "calibration.json").read_text())
    data["model_sha256"] = SHA_B
    (bundle / "calibration.json").write_text(json.dumps(data))
    with pytest.raises(BundleError, match="rerun the profiler"):
        build(tmp_path, bundles=[bundle])


def test_several_bundles_route_by_payload_hash_and_name(tmp_path):
    a = make_bundle(tmp_path / "a", name="alpha", sha=SHA_A)
    b = make_bundle(tmp_path / "b", name="beta", sha=SHA_B)
    app, service, backend = build(tmp_path, bundles=[a, b], max_delay_ms=0.0)
    assert service.wait_ready(5)
    c = app.test_client()
    assert [m["name"] for m in c.get("/v1/models").get_json()["models"]] == ["alpha", "beta"]
    assert c.post("/v1/infer", data=payload(sha=SHA_B)[1]).get_json()["model"] == "beta"
    assert c.post("/v1/infer", data=payload(sha=SHA_A)[1]).get_json()["model"] == "alpha"
    anonymous = payload(sha=None)[1]
    expect_error(c.post("/v1/infer", data=anonymous), 400, "bad_request", "2 served models match")
    assert c.post("/v1/infer?model=beta", data=anonymous).get_json()["model"] == "beta"
    expect_error(c.post("/v1/infer?model=beta", data=payload(sha=SHA_A)[1]), 409, "model_mismatch")
    service.close()


def test_image_endpoint_runs_the_input_tail(served):
    app, _, _ = served
    c = app.test_client()
    pixels = np.random.default_rng(3).integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
    for fmt in ("PNG", "JPEG"):
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, format=fmt)
        resp = c.post("/v1/infer/image?model=fake&k=2", data=buf.getvalue())
        assert resp.status_code == 200, resp.get_json()
        body = resp.get_json()
        assert body["split"] == "input" and body["bits"] is None and len(body["top_k"]) == 2
        if fmt == "PNG":  # lossless: exactly the pixels we sent
            expected = fake_scores(pixels.astype(np.float32)[None])[0]
            assert body["top_k"][0]["class"] == int(np.argmax(expected))
    # grayscale PNGs are converted to RGB
    buf = io.BytesIO()
    Image.fromarray(pixels[..., 0]).save(buf, format="PNG")
    assert c.post("/v1/infer/image", data=buf.getvalue()).status_code == 200


def test_image_endpoint_errors(served):
    app, _, _ = served
    c = app.test_client()
    buf = io.BytesIO()
    Image.new("RGB", (16, 9)).save(buf, format="PNG")
    expect_error(c.post("/v1/infer/image?model=fake", data=buf.getvalue()), 400, "bad_request",
                 "16x9", "expects exactly 8x8")
    expect_error(c.post("/v1/infer/image", data=b"not an image"), 400, "bad_request", "JPEG or PNG")
    gif = io.BytesIO()
    Image.new("RGB", (8, 8)).save(gif, format="GIF")
    expect_error(c.post("/v1/infer/image", data=gif.getvalue()), 400, "bad_request", "GIF")
    expect_error(c.post("/v1/infer/image?model=nope", data=buf.getvalue()), 404, "unknown_model", "nope")


# ---- errors ---------------------------------------------------------------------------------


def test_malformed_payloads_are_400_with_the_codec_message(served):
    app, _, _ = served
    c = app.test_client()
    _, good = payload()
    expect_error(c.post("/v1/infer", data=b"junk"), 400, "bad_payload", "truncated header")
    expect_error(c.post("/v1/infer", data=b"X" * 64), 400, "bad_payload", "bad magic")
    expect_error(c.post("/v1/infer", data=good[:-3]), 400, "bad_payload", "truncated body")
    flipped = bytearray(good)
    flipped[-1] ^= 0xFF
    expect_error(c.post("/v1/infer", data=bytes(flipped)), 400, "bad_payload", "checksum")
    expect_error(c.post("/v1/infer", data=payload("mid", shape=(4, 4, 5))[1]), 400, "bad_payload",
                 "expected [4, 4, 6]")
    no_split = pack(np.zeros(SPLITS["mid"], np.float32), 8, model_sha256=SHA_A)
    expect_error(c.post("/v1/infer", data=no_split), 400, "bad_request", "names no split")
    expect_error(c.post("/v1/infer?k=zero", data=good), 400, "bad_request", "k must be")
    assert c.post("/v1/infer", data=good).status_code == 200  # still serving


def test_unknown_model_split_and_hash(served):
    app, _, _ = served
    c = app.test_client()
    x = np.zeros((4, 4, 6), np.float32)
    expect_error(c.post("/v1/infer", data=pack(x, 8, model_sha256=SHA_A, split="nope")),
                 404, "unknown_split", "'nope'", "mid")
    expect_error(c.post("/v1/infer", data=pack(x, 8, model_sha256=SHA_A, split_index=7)),
                 404, "unknown_split", "index 7")
    expect_error(c.post("/v1/infer", data=pack(x, 8, model_sha256=SHA_A, split="mid", split_index=2)),
                 409, "model_mismatch", "index 2")
    expect_error(c.post("/v1/infer?model=other", data=payload()[1]), 404, "unknown_model", "other")
    expect_error(c.post("/v1/infer", data=payload(sha=SHA_B)[1]), 409, "model_mismatch",
                 SHA_B[:16], "same bundle")


def test_wrong_routes_and_methods_are_json(served):
    app, _, _ = served
    c = app.test_client()
    expect_error(c.get("/v2/nothing"), 404, "not_found")
    resp = c.get("/v1/infer")
    expect_error(resp, 405, "method_not_allowed")
    assert "POST" in resp.headers["Allow"]
    expect_error(c.post("/healthz"), 405, "method_not_allowed")


def test_body_over_the_limit_is_413(tmp_path):
    app, service, _ = build(tmp_path, max_body_bytes=1000)
    assert service.wait_ready(5)
    c = app.test_client()
    expect_error(c.post("/v1/infer", data=b"\0" * 1001), 413, "payload_too_large", "1000 bytes")
    expect_error(c.post("/v1/infer/image", data=b"\0" * 5000), 413, "payload_too_large")
    assert c.post("/v1/infer", data=payload("vec", 8)[1]).status_code == 200
    service.close()


def test_bearer_token_on_every_endpoint_but_healthz(tmp_path, monkeypatch):
    monkeypatch.setenv("SPLITINFER_TOKEN", "s3cret-token")
    app, service, _ = build(tmp_path, token=None)  # None: read from the environment
    assert service.wait_ready(5)
    c = app.test_client()
    assert c.get("/healthz").status_code == 200
    for method, url in [("get", "/readyz"), ("get", "/v1/models"), ("get", "/metrics"),
                        ("post", "/v1/infer"), ("post", "/v1/infer/image"), ("get", "/nowhere")]:
        resp = getattr(c, method)(url, data=b"x") if method == "post" else c.get(url)
        expect_error(resp, 401, "unauthorized", "Bearer")
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")
    for bad in ("Bearer wrong", "Basic s3cret-token", "Bearer", "s3cret-token", "Bearer s3cret-tokenX"):
        expect_error(c.get("/v1/models", headers={"Authorization": bad}), 401, "unauthorized")
    ok = {"Authorization": "Bearer s3cret-token"}
    assert c.get("/v1/models", headers=ok).status_code == 200
    assert c.post("/v1/infer", data=payload()[1], headers=ok).status_code == 200
    body = c.get("/v1/models", headers=ok).get_data(as_text=True)
    assert "s3cret" not in body and "s3cret" not in repr(service.config)
    service.close()


def test_not_ready_is_503_with_retry_after(tmp_path):
    gate = threading.Event()
    app, service, _ = build(tmp_path, backend=FakeBackend(start_gate=gate))
    c = app.test_client()
    resp = c.get("/readyz")
    body = expect_error(resp, 503, "not_ready", "loading")
    assert body["ready"] is False and resp.headers["Retry-After"] == "1"
    expect_error(c.post("/v1/infer", data=payload()[1]), 503, "not_ready")
    assert c.get("/healthz").status_code == 200
    gate.set()
    assert service.wait_ready(5)
    assert c.get("/readyz").status_code == 200
    service.close()


def test_backend_start_failure_is_reported_by_readyz(tmp_path):
    class Broken(FakeBackend):
        def start(self):
            raise ImportError("no module named tensorflow")

    app, service, _ = build(tmp_path, backend=Broken())
    assert wait_until(lambda: service.status()["start_error"] is not None, 10)
    body = expect_error(app.test_client().get("/readyz"), 503, "not_ready", "no module named tensorflow")
    assert body["start_error"].startswith("ImportError")
    service.close()


def test_full_queue_is_503_with_retry_after(tmp_path):
    gate = threading.Event()
    backend = FakeBackend(run_gate=gate)
    app, service, _ = build(tmp_path, backend=backend, max_batch=1, max_queue=1, max_delay_ms=0.0,
                            retry_after_s=2)
    assert service.wait_ready(5)
    answers = []

    def post(seed):
        answers.append(app.test_client().post("/v1/infer", data=payload(seed=seed)[1]))

    running = threading.Thread(target=post, args=(0,))
    running.start()
    _wait_for(lambda: backend.batches)  # request 0 is inside the tail
    queued = threading.Thread(target=post, args=(1,))
    queued.start()
    _wait_for(lambda: service.status() and _depth(service) == 1)
    resp = app.test_client().post("/v1/infer", data=payload(seed=2)[1])
    expect_error(resp, 503, "overloaded", "queue full")
    assert resp.headers["Retry-After"] == "2"
    gate.set()
    running.join(5)
    queued.join(5)
    assert [a.status_code for a in answers] == [200, 200]
    service.close()


def test_tail_failures_are_500_json_and_serving_continues(tmp_path):
    backend = FakeBackend(fail="raise")
    app, service, _ = build(tmp_path, backend=backend, max_delay_ms=0.0)
    assert service.wait_ready(5)
    c = app.test_client()
    expect_error(c.post("/v1/infer", data=payload()[1]), 500, "tail_failed", "GPU fell off the bus")
    backend.fail = "rows"
    expect_error(c.post("/v1/infer", data=payload()[1]), 500, "tail_failed",
                 "tail returned 0 rows for a padded batch of 1")
    backend.fail = None
    assert c.post("/v1/infer", data=payload()[1]).status_code == 200
    service.close()


def test_unexpected_exceptions_become_500_json_without_traceback(served, caplog):
    app, _, _ = served

    def boom():
        raise KeyError("secret internals")

    app.add_url_rule("/boom", "boom", boom)
    resp = app.test_client().get("/boom")
    body = expect_error(resp, 500, "internal")
    assert "secret internals" not in body["error"]
    assert any("unhandled error" in r.message for r in caplog.records)


# ---- batching through the app ----------------------------------------------------------------


def test_concurrent_requests_are_batched_and_answered_to_the_right_caller(tmp_path):
    gate = threading.Event()
    backend = FakeBackend(run_gate=gate)
    app, service, _ = build(tmp_path, backend=backend, max_batch=8, max_delay_ms=50.0)
    assert service.wait_ready(5)
    results: dict[int, dict] = {}

    def post(seed):
        results[seed] = app.test_client().post("/v1/infer?k=1", data=payload(seed=seed)[1]).get_json()

    gate.set()
    threads = [threading.Thread(target=post, args=(s,)) for s in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    from splitinfer.codec import unpack

    for seed, body in results.items():
        expected = int(np.argmax(fake_scores(unpack(payload(seed=seed)[1])[None])))
        assert body["top_k"][0]["class"] == expected, (seed, body)
    assert max(b["batch_size"] for b in results.values()) > 1
    assert all(size in (1, 2, 4, 8) for _, size in backend.batches)  # padded to buckets
    metrics = app.test_client().get("/metrics").get_data(as_text=True)
    assert 'splitinfer_batch_size_count{model="fake",split="mid",pid=' in metrics
    service.close()


def test_lazy_mode_is_ready_before_tails_and_loads_on_first_use(tmp_path):
    app, service, backend = build(tmp_path, load="lazy", max_delay_ms=0.0)
    assert service.wait_ready(5)
    c = app.test_client()
    r = c.get("/readyz").get_json()
    assert r["ready"] and r["load"] == "lazy" and r["tails_loaded"] == 0
    assert c.post("/v1/infer", data=payload("vec", 8)[1]).status_code == 200
    loads = c.get("/readyz").get_json()["loads"]
    assert list(loads) == [f"fake@{SHA_A[:12]}/vec"] and loads[f"fake@{SHA_A[:12]}/vec"]["lazy"]
    service.close()


def test_metrics_exposition(served):
    app, _, _ = served
    c = app.test_client()
    c.post("/v1/infer", data=payload()[1])
    c.post("/v1/infer", data=b"junk")
    c.get("/nope")
    resp = c.get("/metrics")
    assert resp.status_code == 200 and resp.content_type.startswith("text/plain; version=0.0.4")
    text = resp.get_data(as_text=True)
    assert "# TYPE splitinfer_requests_total counter" in text
    assert '# TYPE splitinfer_request_duration_seconds histogram' in text
    for status in ("200", "400"):
        assert f'splitinfer_requests_total{{endpoint="/v1/infer",status="{status}",pid="' in text
    assert 'splitinfer_requests_total{endpoint="unmatched",status="404",pid="' in text
    assert 'splitinfer_request_duration_seconds_bucket{endpoint="/v1/infer",le="+Inf",pid="' in text
    assert 'splitinfer_queue_depth{model="fake",split="mid",pid="' in text
    assert "splitinfer_ready{pid=" in text
    for line in text.splitlines():  # every sample line: name{labels} number
        if line and not line.startswith("#"):
            float(line.rsplit(" ", 1)[1].replace("+Inf", "inf"))


# ---- structure -------------------------------------------------------------------------------


def test_http_layer_never_imports_tensorflow(tmp_path):
    bundle = make_bundle(tmp_path / "fake")
    code = f"""
import sys
sys.path.insert(0, {str(REPO)!r}); sys.path.insert(0, {str(Path(__file__).parent)!r})
import cloud_runtime, cloud_runtime.serve, cloud_runtime.app, cloud_runtime.service
from test_cloud_app import FakeBackend, payload
from cloud_runtime import ServerConfig, create_app
app = create_app(ServerConfig(bundles=({str(bundle)!r},), token=""), backend=FakeBackend())
svc = app.extensions["splitinfer"]; assert svc.wait_ready(5)
assert app.test_client().post("/v1/infer", data=payload()[1]).status_code == 200
bad = sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras"))
print("IMPORTED", bad)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "IMPORTED []" in out.stdout


def test_create_app_without_config_reads_bundles_from_the_environment(tmp_path, monkeypatch):
    bundle = make_bundle(tmp_path / "env")
    monkeypatch.setenv("SPLITINFER_BUNDLES", str(bundle))
    monkeypatch.delenv("SPLITINFER_TOKEN", raising=False)
    app = create_app(backend=FakeBackend())
    assert app.extensions["splitinfer"].config.bundles == (str(bundle),)
    app.extensions["splitinfer"].close()


def test_config_checks_say_what_is_wrong():
    from cloud_runtime.config import ConfigError

    with pytest.raises(ConfigError, match="No bundle"):
        ServerConfig().resolved()
    with pytest.raises(ConfigError, match="max_batch must be an integer >= 1. Received: max_batch=0"):
        ServerConfig(bundles=("x",), max_batch=0).resolved()
    with pytest.raises(ConfigError, match="tail_threads must be an integer >= 1 or None. Received: 0"):
        ServerConfig(bundles=("x",), tail_threads=0).resolved()
    cfg = ServerConfig(bundles=("x",), max_batch=4, token="t").resolved()
    assert cfg.threads == 8 and replace(cfg, threads=3).threads == 3


def test_cli_rejects_a_missing_bundle_in_one_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "cloud_runtime", "--bundle", str(tmp_path / "none")],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.count("\n") == 1 and "does not exist" in out.stderr
    bad = make_bundle(tmp_path / "bad")
    (bad / "manifest.json").write_text(json.dumps({"format": "nope"}))
    out = subprocess.run([sys.executable, "-m", "cloud_runtime", "--bundle", str(bad)],
                         cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and "Not a bundle manifest" in out.stderr
    out = subprocess.run([sys.executable, "-m", "cloud_runtime"], cwd=REPO, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 2 and out.stderr.count("\n") == 1


def _depth(service) -> int:
    return int(sum(v for _, v in service._queue_depths()))


def _wait_for(cond, timeout=5.0):
    if not wait_until(cond, timeout, every=0.005):
        raise AssertionError("condition not reached")


def test_tail_threads_come_from_the_command_line():
    from cloud_runtime.config import ConfigError
    from cloud_runtime.serve import build_parser, config_from_args

    parser = build_parser()
    assert config_from_args(parser.parse_args(["--bundle", "x"])).tail_threads is None
    assert config_from_args(parser.parse_args(["--bundle", "x", "--tail-threads", "1"])).tail_threads == 1
    with pytest.raises(ConfigError, match="tail_threads must be an integer >= 1"):
        config_from_args(parser.parse_args(["--bundle", "x", "--tail-threads", "0"]))


def test_one_worker_on_many_cores_gets_a_hint():
    from cloud_runtime.config import workers_hint

    assert workers_hint(1, 1) is None
    assert workers_hint(2, 2) is None and workers_hint(4, 2) is None
    assert "--workers 8" in workers_hint(1, 8)
