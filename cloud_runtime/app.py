"""Flask app factory and views: decode, route to the right tail, answer JSON.

No TensorFlow here (only the backend imports it, in the worker). Per-request work in the view is
header parsing, model/split resolution and decoding; the tail call goes through the service's
batcher. Answers carry server timings so the edge scheduler can learn cloud latency and load.
"""
from __future__ import annotations

import hmac
import io
import math
import os
import time

import numpy as np
from flask import Flask, Response, current_app, g, jsonify, request
from werkzeug.exceptions import HTTPException

from cloud_runtime.backend import TailBackend, make_backend
from cloud_runtime.buckets import bucket_sizes
from cloud_runtime.config import ConfigError, ServerConfig
from cloud_runtime.connection import (
    LINGER_MAX_S,
    BodyTimedOut,
    Watchdog,
    end_after_answer,
    read_body,
)
from cloud_runtime.errors import (
    BadPayload,
    BadRequest,
    BodyTimeout,
    CalibrationMismatch,
    Unauthorized,
    UnknownSplit,
    register_error_handlers,
)
from cloud_runtime.metrics import CONTENT_TYPE, ServerMetrics
from cloud_runtime.registry import ModelRegistry, ServedModel
from cloud_runtime.service import InferenceService
from splitinfer import protocol as P
from splitinfer.bundle.manifest import INPUT_SPLIT, Split
from splitinfer.codec import REFERENCED_PARAMS, read_header, unpack

BUNDLES_ENV = "SPLITINFER_BUNDLES"
EXTENSION = "splitinfer"
WATCHDOG = "splitinfer.body_deadlines"
OPEN_ENDPOINTS = frozenset({"healthz"})
IMAGE_FORMATS = ("JPEG", "PNG")


def create_app(config: ServerConfig | None = None, *, backend: TailBackend | None = None,
               start: bool = True) -> Flask:
    """A WSGI app serving `config.bundles`; call it in each worker, after the fork.

    `config=None` reads the bundles from $SPLITINFER_BUNDLES (os.pathsep-separated), so
    `gunicorn -c python:cloud_runtime.gunicorn_conf 'cloud_runtime:create_app()'` works too.
    `backend=None` builds the configured one.
    `start=False` leaves the backend unstarted (tests call `service.start` themselves).
    """
    if config is None:
        bundles = tuple(p for p in os.environ.get(BUNDLES_ENV, "").split(os.pathsep) if p)
        config = ServerConfig(bundles=bundles)
    config = config.resolved()
    registry = ModelRegistry.from_bundles(config.bundles)
    try:
        backend = backend or make_backend(config.backend, registry.tails(), num_threads=config.tail_threads)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    service = InferenceService(registry, backend, config,
                               ServerMetrics(bucket_sizes(config.max_batch)))

    app = Flask("cloud_runtime")
    app.config["MAX_CONTENT_LENGTH"] = config.max_body_bytes
    app.json.sort_keys = False
    app.extensions[EXTENSION] = service
    app.extensions[WATCHDOG] = Watchdog()
    register_error_handlers(app)
    _install_hooks(app, config)
    _register_views(app)
    if config.fault_injection:  # tests only: --fault-injection, off by default
        from cloud_runtime.faults import install as install_faults

        install_faults(app, config.retry_after_s)
    if start:
        service.start()
    return app


def _service() -> InferenceService:
    return current_app.extensions[EXTENSION]


# ---- hooks: auth and metrics --------------------------------------------------------------


def _install_hooks(app: Flask, config: ServerConfig) -> None:
    token = config.token.encode("utf-8") if config.auth_enabled else None

    @app.before_request
    def _start_and_authenticate():
        g.t0 = time.perf_counter()
        g.body_read = False
        _service().metrics.request_started()
        sock = request.environ.get("gunicorn.socket")
        if sock is not None:
            # A client that stops sending mid-body must not hold a worker thread for ever.
            sock.settimeout(config.read_timeout_s)
        if token is None or request.endpoint in OPEN_ENDPOINTS:
            return None
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode("utf-8", "replace"), token
        ):
            raise Unauthorized("missing or wrong bearer token: send 'Authorization: Bearer <token>'")
        return None

    @app.after_request
    def _count_and_end(response: Response):
        rule = request.url_rule.rule if request.url_rule is not None else "unmatched"
        t0 = g.get("t0", time.perf_counter())
        metrics = _service().metrics
        metrics.observe_request(rule, response.status_code, time.perf_counter() - t0)
        if _has_body() and not g.get("body_read", False):
            # Answered before the body was read: the rest of it must not hold the connection.
            # A stalled body (408) has nothing to drain; a refused one may still be arriving.
            linger_s = 0.0 if response.status_code == BodyTimeout.status else LINGER_MAX_S
            end = end_after_answer(request.environ, linger_s=linger_s)
        else:
            end = None
        response.call_on_close(lambda: _finish(end, metrics))
        return response


def _finish(end, metrics: ServerMetrics) -> None:
    """After the answer: end the connection if asked, and free the thread in the gauge always."""
    try:
        if end is not None:
            end()
    finally:
        metrics.request_finished()


def _has_body() -> bool:
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    return chunked or bool(request.content_length)


# ---- views ----------------------------------------------------------------------------------


def _register_views(app: Flask) -> None:
    @app.get(P.HEALTH)
    def healthz():
        return jsonify(status="ok", pid=os.getpid())

    @app.get(P.READY)
    def readyz():
        svc = _service()
        status = svc.status()
        if status["ready"]:
            return jsonify(status)
        why = status["start_error"] or (
            f"starting the backend and loading tails ({status['tails_loaded']}/{status['tails_total']})")
        resp = jsonify({"error": f"not ready: {why}", "code": "not_ready", **status})
        resp.status_code = 503
        resp.headers["Retry-After"] = str(svc.config.retry_after_s)
        return resp

    @app.get(P.MODELS)
    def models():
        svc = _service()
        device = svc.backend.device
        cfg = svc.config
        return jsonify(
            models=[{**m.describe(), "device": device} for m in svc.registry.models],
            device=device, device_info=svc.backend.device_info(), backend=svc.backend.name,
            backend_chosen_because=svc.backend.chosen_because, engine=svc.backend.engine,
            load=cfg.load, ready=svc.is_ready(), pid=os.getpid(),
            batching={"max_batch": cfg.max_batch, "max_delay_ms": cfg.max_delay_ms,
                      "max_queue": cfg.max_queue, "buckets": list(svc.buckets)},
            max_body_bytes=cfg.max_body_bytes,
        )

    @app.get(P.METRICS)
    def metrics():
        svc = _service()
        info = (f'# TYPE splitinfer_backend_info gauge\nsplitinfer_backend_info{{backend="{svc.backend.name}",'
                f'device="{svc.backend.device}",engine="{svc.backend.engine}",pid="{os.getpid()}"}} 1\n')
        return Response(svc.metrics.render() + info, content_type=CONTENT_TYPE)

    @app.post(P.PROBE)
    def probe():
        # The edge measures its uplink while it runs device-only: the bytes cost no tail compute.
        body = _read_body()
        return jsonify(received=len(body), receive_ms=round(1e3 * g.receive_s, 3),
                       total_ms=round(1e3 * (time.perf_counter() - g.t0), 3))

    @app.post(P.INFER)
    def infer():
        svc = _service()
        k = _parse_k(svc.config.default_k)
        data = _read_body()
        t_header = time.perf_counter()
        header = read_header(data)
        model = svc.registry.select(name=request.args.get("model"),
                                    sha256=request.headers.get(P.MODEL_SHA256_HEADER),
                                    payload_prefix=header.model_sha256_prefix)
        split = model.find_split(header.split, header.split_index)
        if header.shape not in (split.shape, (1, *split.shape)):
            raise BadPayload(
                f"payload shape {list(header.shape)} does not fit split {split.name!r} of "
                f"{model.name!r}: expected {list(split.shape)} (or [1, ...] with a batch axis); "
                "pack the head's output for that split"
            )
        ranges = _calibration_for(model, split, header)
        header_s = time.perf_counter() - t_header

        def decode() -> np.ndarray:
            x = unpack(data, ranges=ranges, max_elements=max(1, math.prod(split.shape)))
            return x.reshape(split.shape)

        result, decode_s = svc.infer(model.tail(split), decode)
        return _answer(svc, model, split, header.bits, result, header_s + decode_s, k)

    @app.post(P.INFER_IMAGE)
    def infer_image():
        svc = _service()
        k = _parse_k(svc.config.default_k)
        model = svc.registry.select(name=request.args.get("model"),
                                    sha256=request.headers.get(P.MODEL_SHA256_HEADER))
        try:
            split = model.manifest.split(INPUT_SPLIT)
        except KeyError:
            raise UnknownSplit(f"model {model.name!r} has no cloud-only '{INPUT_SPLIT}' tail") from None
        data = _read_body()
        result, decode_s = svc.infer(model.tail(split), lambda: _decode_image(data, model))
        return _answer(svc, model, split, None, result, decode_s, k)


# ---- helpers --------------------------------------------------------------------------------


def _read_body() -> bytes:
    """The request body; how long it took to arrive is upload time, not server time."""
    config = _service().config
    t0 = time.perf_counter()
    try:
        body = read_body(request.stream.read, request.environ.get("gunicorn.socket"),
                         read_timeout_s=config.read_timeout_s, deadline_s=config.body_deadline_s,
                         watchdog=current_app.extensions[WATCHDOG])
    except BodyTimedOut as e:
        how = "was not complete within the body deadline of" if e.deadline else "stalled for"
        raise BodyTimeout(f"request body {how} {e.seconds:g} s; the connection is closed "
                          "(resend it, or raise --body-deadline-s for slow links)") from None
    except HTTPException:
        raise  # 413 and friends keep their status
    except Exception as e:  # the WSGI server's parser (a malformed chunked body, a cut stream)
        raise BadRequest(f"malformed request body: {type(e).__name__}: {str(e)[:200]}") from None
    g.receive_s = time.perf_counter() - t0
    g.body_read = True
    return body


def _parse_k(default: int) -> int:
    raw = request.args.get("k")
    if raw is None:
        return default
    try:
        k = int(raw)
    except ValueError:
        k = 0
    if k < 1:
        raise BadRequest(f"k must be a positive integer (how many classes to return). Received: k={raw[:20]!r}")
    return k


def _calibration_for(model: ServedModel, split: Split, header):
    if header.params not in REFERENCED_PARAMS:
        return None
    served = model.allocations if header.params == "allocated" else model.calibration
    what = "a per-channel allocation" if header.params == "allocated" else "calibrated ranges"
    ranges = served.get(split.name)
    if ranges is None:
        raise CalibrationMismatch(
            f"payload uses {what} (reference {header.calibration_ref}) but the served "
            f"bundle of {model.name!r} has no {'allocation' if header.params == 'allocated' else 'calibration'} "
            f"for split {split.name!r}; deploy the "
            "bundle with its calibration.json, or pack without ranges"
        )
    if ranges.reference != header.calibration_ref:
        raise CalibrationMismatch(
            f"payload calibration reference {header.calibration_ref} does not match the served "
            f"calibration {ranges.reference} for split {split.name!r}; the edge and the cloud "
            "must use the same calibration.json"
        )
    return ranges


def _decode_image(data: bytes, model: ServedModel) -> np.ndarray:
    """An exact-size JPEG/PNG as float32 (H, W, C) 0..255; 400 with expected vs received."""
    from PIL import Image, UnidentifiedImageError

    shape = model.manifest.model.input_shape
    if len(shape) != 3 or shape[-1] not in (1, 3):
        raise BadRequest(f"model {model.name!r} takes input {list(shape)}, not an image")
    h, w, c = shape
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format not in IMAGE_FORMATS:
                raise BadRequest(f"image format {img.format} is not supported; send JPEG or PNG")
            if img.size != (w, h):
                raise BadRequest(
                    f"image is {img.size[0]}x{img.size[1]} (width x height), model {model.name!r} "
                    f"expects exactly {w}x{h}; resize on the edge before sending"
                )
            arr = np.asarray(img.convert("RGB" if c == 3 else "L"), dtype=np.float32)
    except BadRequest:
        raise
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError, SyntaxError) as e:
        raise BadRequest(f"body is not a readable JPEG or PNG image: {type(e).__name__}: {e}") from None
    return arr.reshape(h, w, c)


def _answer(svc: InferenceService, model: ServedModel, split: Split, bits: int | None,
            result, decode_s: float, k: int):
    scores = np.asarray(result.value, dtype=np.float64).reshape(-1)
    order = np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable")[:k]
    top = [{"class": int(i), "score": float(scores[i]) if math.isfinite(scores[i]) else None}
           for i in order]
    body = {"model": model.name, "model_sha256": model.sha256, "split": split.name, "bits": bits,
            "device": svc.backend.device, P.TOP_K: top}
    if model.labels and order.size and int(order[0]) < len(model.labels):
        body["label"] = model.labels[int(order[0])]
    body.update({
        P.RECEIVE_MS: round(1e3 * g.get("receive_s", 0.0), 3),
        P.DECODE_MS: round(1e3 * decode_s, 3),
        P.QUEUE_MS: round(1e3 * result.queue_s, 3),
        P.TAIL_MS: round(1e3 * result.run_s, 3),
        P.TOTAL_MS: round(1e3 * (time.perf_counter() - g.t0), 3),
        P.BATCH_SIZE: result.batch_size,
        "worker": os.getpid(),
    })
    if result.replica is not None:
        body["replica"] = result.replica
    load = svc.load_report()
    body[P.LOAD] = load.as_json()
    response = jsonify(body)
    response.headers[P.LOAD_HEADER] = load.header()
    return response
