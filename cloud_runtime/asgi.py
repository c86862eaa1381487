"""Serve the Flask app from an ASGI server (Ray Serve's proxy), with the body limits enforced
before a thread is taken.

Why not a generic WSGI-to-ASGI bridge: the app's defences against slow and oversized uploads
(`cloud_runtime.connection`) read a socket that an ASGI app never sees. Here the body arrives
as ASGI messages on the event loop, where waiting is cheap: a stall longer than the read
timeout, a body not complete by the deadline, or one past the size limit stops the reading,
and the app, run on a bounded thread pool, answers 408 or 413 through its own error handlers.
"""
from __future__ import annotations

import asyncio
import io
import sys
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from cloud_runtime.connection import BodyTimedOut

WSGIApp = Callable[[dict, Callable], Iterable[bytes]]


@dataclass(frozen=True)
class BodyLimits:
    max_bytes: int
    read_timeout_s: float  # longest silence between two body messages
    deadline_s: float  # the whole body, however slowly it trickles


@dataclass
class ReceivedBody:
    """What arrived of a request body, and why reading stopped early (if it did)."""

    data: bytes
    declared_length: int | None
    timed_out: BodyTimedOut | None = None
    too_large: bool = False
    disconnected: bool = False


async def receive_body(receive: Callable, limits: BodyLimits, declared_length: int | None,
                       clock: Callable[[], float] = time.monotonic) -> ReceivedBody:
    """Read `http.request` messages until the body is complete or a limit is hit."""
    if declared_length is not None and declared_length > limits.max_bytes:
        return ReceivedBody(b"", declared_length, too_large=True)  # refused unread
    parts: list[bytes] = []
    size = 0
    deadline = clock() + limits.deadline_s
    while True:
        remaining = deadline - clock()
        if remaining <= 0:
            return ReceivedBody(b"".join(parts), declared_length,
                                timed_out=BodyTimedOut(limits.deadline_s, deadline=True))
        bounded_by_deadline = remaining < limits.read_timeout_s
        try:
            message = await asyncio.wait_for(receive(), min(limits.read_timeout_s, remaining))
        except asyncio.TimeoutError:
            seconds = limits.deadline_s if bounded_by_deadline else limits.read_timeout_s
            return ReceivedBody(b"".join(parts), declared_length,
                                timed_out=BodyTimedOut(seconds, deadline=bounded_by_deadline))
        if message["type"] == "http.disconnect":
            return ReceivedBody(b"".join(parts), declared_length, disconnected=True)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limits.max_bytes:
            return ReceivedBody(b"", declared_length, too_large=True)
        parts.append(chunk)
        if not message.get("more_body", False):
            return ReceivedBody(b"".join(parts), declared_length)


class _BodyStream(io.RawIOBase):
    """wsgi.input over a received body; raises the body's timeout once the bytes run out."""

    def __init__(self, body: ReceivedBody):
        self._data = io.BytesIO(body.data)
        self._timed_out = body.timed_out

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        chunk = self._data.read(size)
        if not chunk and self._timed_out is not None:
            raise self._timed_out
        return chunk

    def readinto(self, buffer) -> int:
        chunk = self.read(len(buffer))
        buffer[:len(chunk)] = chunk
        return len(chunk)

    def readline(self, size: int = -1) -> bytes:
        return self._data.readline(size)


def wsgi_environ(scope: dict, body: ReceivedBody, limits: BodyLimits) -> dict:
    """The WSGI environ of an ASGI http scope (PEP 3333 names)."""
    path = scope.get("path", "/")
    root = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root):] or "/"
    server = scope.get("server") or ("localhost", 80)
    client = scope.get("client") or ("", 0)
    length = body.declared_length
    if body.too_large:  # past the limit: the app refuses it from the length alone (413)
        length = max(length or 0, limits.max_bytes + 1)
    elif length is None and body.timed_out is None:
        length = len(body.data)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": root,
        "PATH_INFO": path,
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1]),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "REMOTE_ADDR": str(client[0]),
        "REMOTE_PORT": str(client[1]),
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": _BodyStream(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    if length is not None:
        environ["CONTENT_LENGTH"] = str(length)
    else:  # an unknown length that timed out: read to the end, where the timeout is raised
        environ["wsgi.input_terminated"] = True
    for raw_name, raw_value in scope.get("headers", []):
        name = raw_name.decode("latin-1").upper().replace("-", "_")
        value = raw_value.decode("latin-1")
        if name in ("CONTENT_LENGTH", "TRANSFER_ENCODING"):
            continue  # the body is whole here: its length is CONTENT_LENGTH above
        if name == "CONTENT_TYPE":
            environ["CONTENT_TYPE"] = value
            continue
        key = f"HTTP_{name}"
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    return environ


def declared_length(scope: dict) -> int | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def call_wsgi(app: WSGIApp, environ: dict) -> tuple[int, list[tuple[str, str]], bytes]:
    """Run the WSGI app to completion: (status, headers, body); closes its iterable."""
    answer: dict[str, Any] = {}

    def start_response(status: str, headers: list, exc_info=None):
        answer["status"], answer["headers"] = int(status.split(" ", 1)[0]), headers
        return lambda data: None  # the legacy write() callable; Flask never uses it

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return answer["status"], answer["headers"], body


class WSGIOnASGI:
    """An ASGI app that reads each body under `limits`, then runs `app` on `threads` threads."""

    def __init__(self, app: WSGIApp, limits: BodyLimits, threads: int):
        self.app = app
        self.limits = limits
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="wsgi")

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "lifespan":
            while True:
                kind = (await receive())["type"]  # lifespan.startup, then lifespan.shutdown
                await send({"type": f"{kind}.complete"})
                if kind == "lifespan.shutdown":
                    return
        if scope["type"] != "http":
            return
        body = await receive_body(receive, self.limits, declared_length(scope))
        if body.disconnected:
            return  # nobody to answer
        environ = wsgi_environ(scope, body, self.limits)
        loop = asyncio.get_running_loop()
        status, headers, data = await loop.run_in_executor(self._pool, call_wsgi, self.app, environ)
        if body.timed_out is not None or body.too_large:
            headers = [(k, v) for k, v in headers if k.lower() != "connection"]
            headers.append(("Connection", "close"))  # the rest of the body is not read
        await send({"type": "http.response.start", "status": status,
                    "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers]})
        await send({"type": "http.response.body", "body": data})

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
