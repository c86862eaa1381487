"""Every error a client can see, and the one place that turns exceptions into JSON answers.

Clients get `{"error": message, "code": code}` and the right status, never a traceback: anything
unexpected is logged here with its traceback and answered as a generic 500.
"""
from __future__ import annotations

import logging

from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from splitinfer.codec import PackingError

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
        return resp

    @app.errorhandler(Exception)
    def _unexpected(e: Exception):
        log.exception("unhandled error (answered 500)")
        resp = error_body("internal server error (logged on the server)", "internal")
        resp.status_code = 500
        return resp
