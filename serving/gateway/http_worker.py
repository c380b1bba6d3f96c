"""gunicorn's threaded worker, adapted to the gateway (worker_class in serving/gunicorn.conf.py).

- Errors gunicorn answers itself (a request line over `limit_request_line`, too many or too
  large headers, a malformed request) never reach Flask: the status is kept, the HTML page
  becomes `{"error", "code"}`.
- A request's body must arrive within GATEWAY_BODY_TIMEOUT_SECONDS (gunicorn bounds only the
  wait for the headers); a body that fails to arrive is a 408 or 400 and closes the connection.
- The app closes the connection after its answer by setting `CLOSE_CONNECTION` in the environ.
- On SIGTERM the listening sockets close at once: new connections are refused while the
  requests in flight finish, instead of waiting in the backlog to be reset at exit.
- A kept-alive connection stays with its thread for a moment after each answer (see `handle`).

The app (create_app) knows nothing of this module.
"""

from __future__ import annotations

import json
import re
import select
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from gunicorn import util
from gunicorn.http.errors import NoMoreData, ParseException
from gunicorn.workers.gthread import ThreadWorker
from werkzeug.exceptions import BadRequest, RequestTimeout

from serving.gateway.config import load_config
from serving.gateway.errors import CODE_BY_HTTP_STATUS
from serving.gateway.request_hooks import CLOSE_CONNECTION

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ([^\r\n]*)")
# How long a thread waits on its kept-alive connection for the next request before handing the
# connection back to the worker's poller: a client's next request follows its answer at once.
KEEPALIVE_LINGER_SECONDS = 0.02
_serving = threading.local()  # the gunicorn request this thread is answering

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def json_error_response(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({
        "error": f"{reason}: {message}"[:512] if message else reason,
        "code": CODE_BY_HTTP_STATUS.get(status, "bad_request"),
    }).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


class _BodyDeadlineSocket:
    """The client socket as the request's body is read from it: each recv waits at most until the
    body's deadline, then raises TimeoutError."""

    def __init__(self, sock: Any, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def recv(self, size: int) -> bytes:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request body's deadline has passed")
        self._sock.settimeout(remaining)
        try:
            data: bytes = self._sock.recv(size)
            return data
        finally:
            self._sock.settimeout(None)  # blocking again, as gthread keeps its sockets

    def __getattr__(self, name: str) -> Any:
        return getattr(self._sock, name)


class _Body:
    """The request body as the app reads it (wsgi.input): what reading it can fail with becomes
    a 408 or 400 for the app to answer, and the connection closes after that answer, as where
    the next request would start is unknown."""

    def __init__(self, body: Any, request: Any, timeout: float) -> None:
        self._body, self._request, self._timeout = body, request, timeout

    def read(self, size: int | None = None) -> bytes:
        return self._read(self._body.read, size)

    def readline(self, size: int | None = None) -> bytes:
        return self._read(self._body.readline, size)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.readline, b"")

    def _read(self, read: Callable[[int | None], bytes], size: int | None) -> bytes:
        try:
            return read(size)
        except TimeoutError:
            self._request.must_close = True
            raise RequestTimeout(f"the request body did not arrive within {self._timeout:g} s") from None
        except NoMoreData:
            self._request.must_close = True
            raise BadRequest("the connection ended before the whole request body arrived") from None
        except ParseException as error:
            self._request.must_close = True
            raise BadRequest(f"the request body's chunked encoding is malformed: {error}") from None


class _CapturedSocket:
    """Stands in for the client socket while gunicorn writes its HTML error page."""

    def __init__(self) -> None:
        self.data = b""

    def gettimeout(self) -> float:
        return 0.0

    def sendall(self, data: bytes) -> None:
        self.data += data


class GatewayThreadWorker(ThreadWorker):  # type: ignore[misc]
    def init_process(self) -> None:
        self.body_timeout = load_config()["GATEWAY_BODY_TIMEOUT_SECONDS"]
        super().init_process()

    def load_wsgi(self) -> None:
        super().load_wsgi()
        app: WsgiApp = self.wsgi  # type: ignore[has-type]
        timeout: float = self.body_timeout

        def served(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            """The app, given a body that fails as a 4xx, and closing the connection when it asks."""
            request = _serving.request
            environ["wsgi.input"] = _Body(environ["wsgi.input"], request, timeout)

            def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
                if environ.get(CLOSE_CONNECTION):
                    request.must_close = True
                return start_response(status, headers, exc_info)

            return app(environ, start)

        self.wsgi = served

    def handle(self, conn: Any) -> bool:
        """Serve a connection's requests while the next one comes right after the answer.

        gthread hands every kept-alive connection back to the main thread's poller after each
        answer, and a thread from the pool picks it up again when the next request arrives: costly
        per request. The thread waits here instead, and only while this worker holds no more
        connections than it has threads, so that no other connection waits for it.
        """
        result: bool = super().handle(conn)
        while result is True and self.alive and self.nr_conns <= self.cfg.threads:
            if not conn.parser.unreader.buf.getvalue():  # nothing read ahead: wait on the socket
                poller = select.poll()
                poller.register(conn.sock, select.POLLIN)
                if not poller.poll(KEEPALIVE_LINGER_SECONDS * 1000):
                    break
            result = super().handle(conn)
        return result

    def handle_request(self, req: Any, conn: Any) -> bool:
        unreader = conn.parser.unreader
        sock = unreader.sock
        unreader.sock = _BodyDeadlineSocket(sock, time.monotonic() + self.body_timeout)
        _serving.request = req
        try:
            handled: bool = super().handle_request(req, conn)
            return handled
        finally:
            _serving.request = None
            unreader.sock = sock

    def set_accept_enabled(self, enabled: bool) -> None:
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive:  # shutting down, not merely at worker_connections
            for listener in self.sockets:
                listener.close()

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        captured = _CapturedSocket()
        super().handle_error(req, captured, addr, exc)
        match = _STATUS_LINE.match(captured.data)
        if match is None:
            return
        status, reason = int(match.group(1)), match.group(2).decode("latin-1")
        message = "" if status >= 500 else str(exc)
        try:
            util.write_nonblock(client, json_error_response(status, reason, message))
        except Exception:  # noqa: BLE001 - the client may be gone; gunicorn ignores this too
            self.log.debug("Failed to send error message.")
