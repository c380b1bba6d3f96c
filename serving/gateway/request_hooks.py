"""What happens around every request: its id, authentication, metrics and its one log line.

The id is the caller's `X-Request-ID` when it is a sane token, else a new one; it is
returned in the response, passed to the model server and written in the log line.
Views add what they learn (model, version, timings) to the request's `g.trace`.
"""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from typing import IO, Any

from flask import Flask, Request, Response, g, request

from serving.gateway import metrics
from serving.gateway.auth import TokenAuthenticator
from serving.gateway.core import RequestTrace
from serving.gateway.requests_parsing import has_chunked_body

logger = logging.getLogger("serving.gateway.requests")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")
# Set in the WSGI environ when the connection must close after the answer; the HTTP server
# (http_worker.py) honours it. Hop-by-hop headers such as `Connection` are not the app's to send.
CLOSE_CONNECTION = "pixelgate.close_connection"
# gunicorn reads and drops up to 64 KiB of a body the app left unread before the next request on
# the connection; beyond that, or with a chunked body, an error answer closes the connection.
_DRAINED_BYTES = 64 * 1024


def _incoming_request_id(headers: Mapping[str, str]) -> str:
    given = headers.get("X-Request-ID", "")
    return given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def register(app: Flask, authenticator: TokenAuthenticator) -> None:
    # Each hook reads the request and `g` through one context lookup, not one per attribute.
    @app.before_request
    def start_request() -> None:
        current, state = request._get_current_object(), g._get_current_object()  # type: ignore[attr-defined]
        state.started = time.perf_counter()
        state.request_id = _incoming_request_id(current.headers)
        state.trace = RequestTrace()
        metrics.IN_FLIGHT.inc()
        state.in_flight = True
        if current.content_length or has_chunked_body(current.environ):
            state.counted_input = current.environ["wsgi.input"] = _CountedInput(current.environ["wsgi.input"])
        if authenticator.enabled:
            authenticator.check(current.path, current.headers.get("Authorization"))

    @app.after_request
    def finish_request(response: Response) -> Response:
        current, state = request._get_current_object(), g._get_current_object()  # type: ignore[attr-defined]
        elapsed = time.perf_counter() - state.get("started", time.perf_counter())
        endpoint = current.url_rule.rule if current.url_rule else "unmatched"
        trace: RequestTrace = state.get("trace") or RequestTrace()
        status, content_length = response.status_code, _body_bytes(current, state.get("counted_input"))
        if status >= 400 and (content_length > _DRAINED_BYTES or has_chunked_body(current.environ)):
            current.environ[CLOSE_CONNECTION] = True
        metrics.REQUESTS.labels(endpoint, trace.model, str(status), str(trace.version)).inc()
        metrics.LATENCY.labels(endpoint).observe(elapsed)
        if content_length:
            metrics.REQUEST_BYTES.labels(endpoint).observe(content_length)
        headers = response.headers
        headers["X-Request-ID"] = state.get("request_id", "")
        if trace.version != "":
            headers["X-Model-Version"] = str(trace.version)
        if status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="pixelgate"'
        if logger.isEnabledFor(logging.INFO):
            _log_request(current, response, endpoint, elapsed, trace, {
                "request_id": state.get("request_id", ""), "code": state.get("error_code", ""),
                "request_bytes": content_length})
        return response

    @app.teardown_request
    def end_request(error: BaseException | None) -> None:
        if g.pop("in_flight", False):
            metrics.IN_FLIGHT.dec()


def _log_request(current: Request, response: Response, endpoint: str, elapsed: float, trace: RequestTrace,
                 known: dict[str, Any]) -> None:
    """The request's one log line; its fields are the line's data (see logging_setup)."""
    path = current.path[:256]
    fields = {
        "request_id": known["request_id"],
        "method": current.method,
        "path": path,
        "endpoint": endpoint,
        "status": response.status_code,
        "code": known["code"],
        "model": trace.model,
        "version": trace.version,
        "images": trace.images,
        "request_bytes": known["request_bytes"],
        "duration_ms": round(elapsed * 1000, 2),
        "preprocess_ms": round(trace.preprocess_seconds * 1000, 2),
        "model_server_ms": round(trace.model_server_seconds * 1000, 2),
        "remote_addr": current.remote_addr or "",
    }
    logger.info("%s %s %d", current.method, path, response.status_code, extra={"fields": fields})


class _CountedInput:
    """The request body's WSGI stream, counting the bytes read: a chunked body has no
    Content-Length to log."""

    def __init__(self, stream: IO[bytes]) -> None:
        self._stream = stream
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        return self._counted(self._stream.read, size)

    def readline(self, size: int = -1) -> bytes:
        return self._counted(self._stream.readline, size)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")

    def _counted(self, read: Callable[[int], bytes], size: int) -> bytes:
        data = read(size)
        self.count += len(data)
        return data


def _body_bytes(current: Request, counted: _CountedInput | None) -> int:
    """The body's size: its Content-Length, or for a chunked body what was read of it."""
    if current.content_length is not None:
        return current.content_length
    return counted.count if counted is not None else 0
