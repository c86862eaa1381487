"""Fault injection for reliability tests: make the inference endpoints fail on purpose.

Off unless the server is started with `--fault-injection` (`ServerConfig.fault_injection`);
only then does `POST /v1/_faults` exist. Body: ``{"mode": "off" | "error_503" | "error_500" |
"hang", "seconds": N}``: for the next N seconds (0 < N <= MAX_SECONDS) every request of this
worker to `/v1/infer`, `/v1/infer/image` and `/v1/probe` is answered 503 (with Retry-After) or
500, or hangs until the fault ends and is then served normally. `{"mode": "off"}` ends a fault
at once (and releases hanging requests). `GET /v1/_faults` says what is set. Faults end by
themselves, so a test that dies midway leaves no broken server behind.

Auth: the endpoint sits behind the same bearer-token check as every other one (when a token
is configured), and the check runs before any fault, so a fault never hides a 401. Faults
are per worker (state lives in the worker process): use `--workers 1` when a test needs every
request to see them. /healthz, /readyz, /metrics and /v1/models are never affected.
"""
from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable

from flask import Flask, g, jsonify, request

from cloud_runtime.errors import ApiError, BadRequest

log = logging.getLogger("cloud_runtime")

MODES = ("off", "error_503", "error_500", "hang")
MAX_SECONDS = 600.0
#: Flask endpoint names (view function names in app.py) that faults apply to.
FAULTY_ENDPOINTS = frozenset({"infer", "infer_image", "probe"})
EXTENSION = "splitinfer_faults"


class InjectedUnavailable(ApiError):
    status, code = 503, "injected_unavailable"

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class InjectedFailure(ApiError):
    status, code = 500, "injected_failure"


class FaultInjector:
    """The one fault of a worker, its deadline, and how many requests it hit (thread-safe)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._cond = threading.Condition()
        self._mode = "off"
        self._until = 0.0
        self._generation = 0  # bumped by every set(): a hang ends when its fault is replaced
        self.hits = {m: 0 for m in MODES if m != "off"}

    def set(self, mode: str, seconds: float | None = None) -> dict:
        if mode not in MODES:
            raise BadRequest(f"Expected one of {list(MODES)}. Received: mode={mode!r}")
        if mode != "off":
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not (
                    math.isfinite(seconds) and 0 < seconds <= MAX_SECONDS):
                raise BadRequest(f"seconds must be a number in (0, {MAX_SECONDS:g}] for mode "
                                 f"{mode!r}. Received: seconds={seconds!r}")
        with self._cond:
            self._mode = mode
            self._until = self._clock() + float(seconds) if mode != "off" else 0.0
            self._generation += 1
            self._cond.notify_all()
        log.warning("fault injection: mode=%s for %s s", mode, seconds if mode != "off" else 0)
        return self.state()

    def state(self) -> dict:
        with self._cond:
            mode, left = self._current()
            return {"mode": mode, "seconds_left": round(left, 3), "hits": dict(self.hits)}

    def apply(self, retry_after_s: int) -> None:
        """Called before an inference view: raise, hang, or return (no fault)."""
        with self._cond:
            mode, left = self._current()
            if mode == "off":
                return
            self.hits[mode] += 1
            if mode == "hang":
                generation = self._generation
                deadline = self._clock() + left
                while self._generation == generation and (rest := deadline - self._clock()) > 0:
                    self._cond.wait(rest)
                return  # then served normally: a stalled server that comes back
        if mode == "error_503":
            raise InjectedUnavailable(f"injected fault: unavailable for {left:.1f} more s",
                                      retry_after_s)
        raise InjectedFailure(f"injected fault: failing for {left:.1f} more s")

    def _current(self) -> tuple[str, float]:
        if self._mode == "off":
            return "off", 0.0
        left = self._until - self._clock()
        if left <= 0:
            self._mode = "off"
            return "off", 0.0
        return self._mode, left


def install(app: Flask, retry_after_s: int) -> FaultInjector:
    """Add POST/GET /v1/_faults and the hook; call after the auth hook is installed."""
    faults = FaultInjector()
    app.extensions[EXTENSION] = faults
    log.warning("fault injection is ON: POST /v1/_faults can make this server fail on purpose; "
                "never enable it in production")

    @app.before_request
    def _inject():
        if request.endpoint in FAULTY_ENDPOINTS:
            faults.apply(retry_after_s)

    @app.route("/v1/_faults", methods=["GET", "POST"])
    def set_fault():
        if request.method == "GET":
            return jsonify(faults.state())
        body = request.get_json(force=True, silent=True)
        g.body_read = True  # read whole: the connection may stay open
        if not isinstance(body, dict):
            raise BadRequest('expected a JSON object like {"mode": "error_503", "seconds": 5}')
        return jsonify(faults.set(body.get("mode"), body.get("seconds")))

    return faults
