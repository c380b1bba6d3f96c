"""The REST API on a port: werkzeug's threaded HTTP server in front of `RestApiHandler`.

As TF Serving's http_server.cc: paths under `/v1/` go to the handler, the Prometheus
page (when --monitoring_config_file enables it) sits on its own path, `OPTIONS` answers
CORS preflights, and at most --rest_api_num_threads requests run at once while any
number of connections stay open (libevent accepts them all; its executor bounds the work).
Paths under `/v2` go to the Open Inference Protocol's handler (oip/rest.py), when one is set.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Protocol
from urllib.parse import urlsplit

from werkzeug.serving import ThreadedWSGIServer, WSGIRequestHandler
from werkzeug.wrappers import Request

from serving.config.monitoring_config_pb2 import MonitoringConfig
from serving.model_server import monitoring
from serving.model_server.errors import Internal, InvalidArgument, http_status
from serving.model_server.rest.api import API_PATH, RestAnswer, RestApiHandler
from serving.model_server.rest.json_answers import error_response

logger = logging.getLogger(__name__)

JSON_CONTENT_TYPE = "application/json"
# AddCORSHeaders(), added to every answer with --rest_api_enable_cors_support.
CORS_HEADERS = (
    ("Access-Control-Allow-Origin", "*"),
    ("Access-Control-Allow-Methods", "POST, GET"),
    ("Access-Control-Allow-Headers", "Content-Type"),
)
IDLE_CONNECTION_SECONDS = 75  # a kept-alive connection with no request for this long is closed

StartResponse = Callable[[str, list[tuple[str, str]]], object]
RequestObserver = Callable[[str, str, RestAnswer, float], None]
OIP_PATH = re.compile(r"/v2(?:/.*)?")


class HeaderReadingHandler(Protocol):
    """A handler that needs the request's headers too (the v2 binary extension's), by lower-case name."""

    def handle(self, method: str, path: str, body: bytes, headers: Mapping[str, str]) -> RestAnswer: ...


class _RequestHandler(WSGIRequestHandler):
    # One line per request is the model server's own log's job, at DEBUG; werkzeug's is off.
    timeout = IDLE_CONNECTION_SECONDS

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class RestApiServer:
    """Listens on one address; `start()` serves in background threads, `stop()` drains and closes."""

    def __init__(
        self,
        handler: RestApiHandler,
        address: str,
        num_threads: int,
        enable_cors: bool = False,
        monitoring_config: MonitoringConfig | None = None,
        oip_handler: HeaderReadingHandler | None = None,
    ) -> None:
        self.handler = handler
        self.oip_handler = oip_handler
        self.enable_cors = enable_cors
        self.prometheus_path = monitoring.prometheus_path(monitoring_config or MonitoringConfig())
        self.observers: list[RequestObserver] = []  # e.g. metrics: (http method, path, answer, seconds)
        self._slots = threading.BoundedSemaphore(max(num_threads, 1))
        self._in_flight = 0
        self._idle = threading.Condition()
        host, port = _split_address(address)
        try:
            # Bound here, not by werkzeug, which would sys.exit() on a busy port.
            listener = socket.create_server((host, port), backlog=1024)
        except OSError as error:
            raise InvalidArgument(f"Failed to start HTTP Server at {address}: {error.strerror}") from error
        with listener:
            self._server = ThreadedWSGIServer(
                host, port, self._application, _RequestHandler, fd=listener.fileno()
            )
        self.port: int = self._server.port
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._server.serve_forever, name="rest-api", daemon=True)
        self._thread.start()

    def stop(self, grace: float | None = None) -> None:
        """Stop accepting requests, wait up to `grace` seconds for those running, close the socket."""
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0, timeout=grace)
        self._server.server_close()

    def _application(self, environ: dict[str, object], start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        # The path as sent: the handler unquotes the model name itself, after matching.
        raw_path = urlsplit(str(environ.get("RAW_URI") or request.path)).path
        method = request.method
        if self.prometheus_path is not None and raw_path == self.prometheus_path:
            page, content_type = monitoring.prometheus_page()
            return self._respond(start_response, 200, page, content_type)
        is_oip = self.oip_handler is not None and OIP_PATH.fullmatch(raw_path) is not None
        if not is_oip and not API_PATH.fullmatch(raw_path):
            body = error_response(f"Not found: {method} {raw_path}")
            return self._respond(start_response, 404, body.encode(), JSON_CONTENT_TYPE)
        if method == "OPTIONS":
            return self._preflight(start_response, request)
        body_bytes = request.get_data(cache=False)
        started = time.perf_counter()
        with self._in_flight_request(), self._slots:
            headers = {key.lower(): value for key, value in request.headers.items()} if is_oip else None
            answer = self._answer(method, raw_path, body_bytes, headers)
        elapsed = time.perf_counter() - started
        for observer in self.observers:
            observer(method, raw_path, answer, elapsed)
        logger.debug("REST %s %s -> %d %.1fms", method, raw_path, answer.status, elapsed * 1000)
        encoded = answer.body
        if isinstance(encoded, str):
            encoded = encoded.encode("utf-8", "surrogateescape")
        return self._respond(start_response, answer.status, encoded, answer.content_type, answer.headers)

    def _answer(self, method: str, path: str, body: bytes, headers: Mapping[str, str] | None) -> RestAnswer:
        try:
            if headers is not None and self.oip_handler is not None:
                return self.oip_handler.handle(method, path, body, headers)
            return self.handler.handle(method, path, body)
        except Exception as error:  # a fault of ours: answer 500 in JSON, keep serving
            logger.exception("REST %s %s failed", method, path)
            message = f"{type(error).__name__}: {error}"
            return RestAnswer(500, error_response(message), error=Internal(message))

    def _preflight(self, start_response: StartResponse, request: Request) -> Iterable[bytes]:
        # RestApiRequestDispatcher: an OPTIONS request with an http(s) Origin is fine, else 400.
        if re.search(r"https?://", request.headers.get("Origin", "")):
            return self._respond(start_response, 200, b"", None)
        error = InvalidArgument("Origin header is missing in CORS preflight")
        body = error_response(error.message).encode()
        return self._respond(start_response, http_status(error.code), body, JSON_CONTENT_TYPE)

    def _respond(
        self,
        start_response: StartResponse,
        status: int,
        body: bytes,
        content_type: str | None,
        extra_headers: Iterable[tuple[str, str]] = (),
    ) -> Iterable[bytes]:
        headers = [("Content-Length", str(len(body)))]
        if content_type:
            headers.append(("Content-Type", content_type))
        headers.extend(extra_headers)
        if self.enable_cors:
            headers.extend(CORS_HEADERS)
        start_response(f"{status} {_REASONS.get(status, 'Unknown')}", headers)
        return [body]

    @contextlib.contextmanager
    def _in_flight_request(self) -> Iterator[None]:
        # Counted from arrival (queued for a slot included), so stop() waits for it.
        with self._idle:
            self._in_flight += 1
        try:
            yield
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    409: "Conflict",
    429: "Too Many Requests",
    499: "Client Closed Request",
    500: "Internal Server Error",
    501: "Not Implemented",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}
