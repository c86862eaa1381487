"""Every error a client can see, and the one place that turns exceptions into JSON answers.

Clients get `{"error": message, "code": code}` and the right status, never a traceback: anything
unexpected is logged here with its traceback and answered as a generic 500.
"""
from __future__ import annotations

import logging
import time

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from edge_runtime.packing import PackingError

log = logging.getLogger("cloud_runtime")


class ApiError(Exception):
    """An error with a status and a stable machine-readable code."""

    status = 500
    code = "internal"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.message = message
        self.headers = dict(headers or {})


class BadRequest(ApiError):
    status, code = 400, "bad_request"


class BadPayload(ApiError):
    status, code = 400, "bad_payload"


class BodyTimeout(ApiError):
    status, code = 408, "body_timeout"

    def __init__(self, message: str):
        # The WSGI server closes the connection itself: the body it was reading has failed.
        super().__init__(message)


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"

    def __init__(self, message: str):
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="splitinfer"'})


class UnknownModel(ApiError):
    status, code = 404, "unknown_model"


class UnknownSplit(ApiError):
    status, code = 404, "unknown_split"


class ModelMismatch(ApiError):
    status, code = 409, "model_mismatch"


class CalibrationMismatch(ApiError):
    status, code = 409, "calibration_mismatch"


class Overloaded(ApiError):
    status, code = 503, "overloaded"

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class NotReady(ApiError):
    status, code = 503, "not_ready"

    def __init__(self, message: str, retry_after_s: int):
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class TailFailed(ApiError):
    status, code = 500, "tail_failed"


#: werkzeug's own errors (routing, body size) keep their status; these are their codes.
# How much of an oversized body the server reads and drops before answering 413 (see _linger):
# enough for uploads a little over --max-body-bytes; beyond it a reset is the client's answer.
LINGER_MAX_BYTES = 8 << 20
LINGER_MAX_S = 1.0

HTTP_CODES = {
    400: "bad_request",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
}


def error_body(message: str, code: str):
    return jsonify(error=message, code=code)


def register_error_handlers(app: Flask) -> None:
    """Install the handlers; every error response of the app goes through one of these."""

    @app.errorhandler(ApiError)
    def _api_error(e: ApiError):
        resp = error_body(e.message, e.code)
        resp.status_code = e.status
        resp.headers.update(e.headers)
        return resp

    @app.errorhandler(PackingError)
    def _packing_error(e: PackingError):
        resp = error_body(f"malformed payload: {e}", BadPayload.code)
        resp.status_code = 400
        return resp

    @app.errorhandler(HTTPException)
    def _http_error(e: HTTPException):
        status = e.code or 500
        message = e.description or e.name
        if status == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            message = (f"request body is over the limit of {limit} bytes; send a smaller payload "
                       "(fewer bits or a later split) or raise --max-body-bytes")
        elif status == 404:
            message = "no such endpoint; see GET /v1/models, POST /v1/infer, POST /v1/infer/image"
        resp = error_body(message, HTTP_CODES.get(status, f"http_{status}"))
        resp.status_code = status
        for key, value in e.get_headers():
            if key.lower() != "content-type":
                resp.headers[key] = value
        if status == 413:
            # The unread body is still on the wire: this connection cannot carry another request.
            resp.headers["Connection"] = "close"
            _linger(request.environ)
        return resp

    def _linger(environ: dict) -> None:
        """Read and drop what the client is still sending (a bounded amount, briefly) before the
        413 goes out: closing a socket with unread data resets the connection, and the client
        would see a reset instead of the answer (seen as RemoteDisconnected in requests)."""
        stream = environ.get("wsgi.input")
        if stream is None:
            return
        sock = environ.get("gunicorn.socket")
        before = sock.gettimeout() if sock is not None else None
        left, deadline = LINGER_MAX_BYTES, time.monotonic() + LINGER_MAX_S
        try:
            while left > 0:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                if sock is not None:  # a silent client ends the linger, not the read timeout
                    sock.settimeout(remaining)
                chunk = stream.read(min(65536, left))
                if not chunk:
                    return
                left -= len(chunk)
        except Exception:  # noqa: BLE001 - a broken or stalled upload: nothing more to save
            return
        finally:
            if sock is not None:
                try:
                    sock.settimeout(before)  # the answer goes out under the usual timeout
                except OSError:
                    pass

    @app.errorhandler(Exception)
    def _unexpected(e: Exception):
        log.exception("unhandled error (answered 500)")
        resp = error_body("internal server error (logged on the server)", "internal")
        resp.status_code = 500
        return resp
