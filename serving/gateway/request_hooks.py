"""What happens around every request: its id, authentication, metrics and its one log line.

The id is the caller's `X-Request-ID` when it is a sane token, else a new one; it is
returned in the response, passed to the model server and written in the log line.
Views add what they learn (model, version, timings) to `flask.g`.
"""

from __future__ import annotations

import logging
import re
import time
import uuid

from flask import Flask, Response, g, request
from gunicorn.http.errors import NoMoreData, ParseException
from werkzeug.exceptions import BadRequest, RequestTimeout

from serving.gateway import metrics
from serving.gateway.auth import TokenAuthenticator
from serving.gateway.http_worker import BODY_TIMEOUT_SECONDS, close_connection_after_response
from serving.gateway.requests_parsing import has_chunked_body

logger = logging.getLogger("serving.gateway.requests")

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=@-]{1,128}")


def request_id() -> str:
    return g.get("request_id", "")


def _incoming_request_id(headers) -> str:
    given = headers.get("X-Request-ID", "")
    return given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def register(app: Flask, authenticator: TokenAuthenticator) -> None:
    # The hooks run on every request: each reads the request and `g` through one context
    # lookup (`_get_current_object`) instead of one per attribute, some 30 lookups less.
    @app.before_request
    def start_request():
        current, state = request._get_current_object(), g._get_current_object()  # type: ignore[attr-defined]
        state.started = time.perf_counter()
        state.request_id = _incoming_request_id(current.headers)
        metrics.IN_FLIGHT.inc()
        state.in_flight = True
        if current.content_length or has_chunked_body(current.environ):
            state.counted_input = current.environ["wsgi.input"] = _BodyInput(current.environ["wsgi.input"])
        if authenticator.enabled:
            authenticator.check(current.path, current.headers.get("Authorization"))

    @app.after_request
    def finish_request(response: Response):
        current, state = request._get_current_object(), g._get_current_object()  # type: ignore[attr-defined]
        elapsed = time.perf_counter() - state.get("started", time.perf_counter())
        endpoint = current.url_rule.rule if current.url_rule else "unmatched"
        model, version = state.get("model", ""), state.get("version", "")
        status, content_length = response.status_code, _body_bytes(current, state)
        state.body_bytes = content_length
        if status >= 400 and (content_length > _DRAINED_BYTES or has_chunked_body(current.environ)):
            close_connection_after_response()
        metrics.REQUESTS.labels(endpoint, model, str(status), str(version)).inc()
        metrics.LATENCY.labels(endpoint).observe(elapsed)
        if content_length:
            metrics.REQUEST_BYTES.labels(endpoint).observe(content_length)
        headers = response.headers
        headers["X-Request-ID"] = state.get("request_id", "")
        if version != "":
            headers["X-Model-Version"] = str(version)
        if status == 401:
            headers["WWW-Authenticate"] = 'Bearer realm="pixelgate"'
        if logger.isEnabledFor(logging.INFO):
            _log_request(current, state, response, endpoint, elapsed)
        return response

    @app.teardown_request
    def end_request(error: BaseException | None):
        if g.pop("in_flight", False):
            metrics.IN_FLIGHT.dec()


def _log_request(current, state, response: Response, endpoint: str, elapsed: float) -> None:
    """The request's one log line; its fields are the line's data (see logging_setup)."""
    path = current.path[:256]
    fields = {
        "request_id": state.get("request_id", ""),
        "method": current.method,
        "path": path,
        "endpoint": endpoint,
        "status": response.status_code,
        "code": state.get("error_code", ""),
        "model": state.get("model", ""),
        "version": state.get("version", ""),
        "images": state.get("images", 0),
        "request_bytes": state.get("body_bytes", 0),
        "duration_ms": round(elapsed * 1000, 2),
        "preprocess_ms": round(state.get("preprocess_seconds", 0.0) * 1000, 2),
        "model_server_ms": round(state.get("model_server_seconds", 0.0) * 1000, 2),
        "remote_addr": current.remote_addr or "",
    }
    logger.info("%s %s %d", current.method, path, response.status_code, extra={"fields": fields})


# gunicorn reads and drops up to 64 KiB of a body the app left unread before the next request on
# the connection; beyond that, or with a chunked body, an error answer closes the connection.
_DRAINED_BYTES = 64 * 1024


class _BodyInput:
    """The request body's WSGI stream: counts the bytes read (a chunked body has no
    Content-Length to log), and turns what reading it can fail with into 4xx answers."""

    def __init__(self, stream) -> None:
        self._stream = stream
        self.count = 0

    def read(self, size: int = -1) -> bytes:
        return self._counted(self._stream.read, size)

    def readline(self, size: int = -1) -> bytes:
        return self._counted(self._stream.readline, size)

    def __iter__(self):
        return iter(self.readline, b"")

    def _counted(self, read, size: int) -> bytes:
        try:
            data = read(size)
        except (TimeoutError, ParseException, NoMoreData) as error:
            close_connection_after_response()  # where the next request would start is unknown
            if isinstance(error, TimeoutError):
                raise RequestTimeout(
                    f"the request body did not arrive within {BODY_TIMEOUT_SECONDS:g} s"
                ) from None
            if isinstance(error, NoMoreData):
                raise BadRequest("the connection ended before the whole request body arrived") from None
            raise BadRequest(f"the request body's chunked encoding is malformed: {error}") from None
        self.count += len(data)
        return data


def _body_bytes(current, state) -> int:
    """The body's size: its Content-Length, or for a chunked body what was read of it."""
    if current.content_length is not None:
        return current.content_length
    counted = state.get("counted_input")
    return counted.count if counted is not None else 0
