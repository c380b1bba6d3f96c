"""gunicorn's threaded worker, with three changes for the gateway (worker_class in serving/gunicorn.conf.py).

Errors gunicorn raises itself (a request line over `limit_request_line` such as a very long
model name, too many or too large headers, a malformed request) never reach Flask: gunicorn
answers them with an HTML page; this worker keeps the status and sends `{"error", "code"}`.
On SIGTERM it closes its listening sockets at once, so new connections are refused while
the requests in flight finish, instead of waiting in the backlog to be reset at exit.
A kept-alive connection stays with its thread for a moment after each answer (see `handle`).
A request's body must arrive within GATEWAY_BODY_TIMEOUT_SECONDS (gunicorn bounds only the wait
for the headers), and the app can ask for the connection to close after its answer.
"""

from __future__ import annotations

import json
import os
import re
import select
import threading
import time

from gunicorn import util
from gunicorn.workers.gthread import ThreadWorker

_STATUS_LINE = re.compile(rb"HTTP/1\.[01] (\d{3}) ([^\r\n]*)")
_CODES = {
    400: "bad_request",
    403: "forbidden",
    414: "uri_too_long",
    417: "expectation_failed",
    431: "request_header_fields_too_large",
    500: "internal_error",
    501: "not_implemented",
}


def _body_timeout() -> float:
    text = os.environ.get("GATEWAY_BODY_TIMEOUT_SECONDS", "30")
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise SystemExit(f"GATEWAY_BODY_TIMEOUT_SECONDS must be a positive number of seconds, got {text!r}")
    return seconds


# How long a request's whole body may take to arrive: a client trickling it a byte at a time
# would otherwise hold one of the worker's threads for as long as it likes.
BODY_TIMEOUT_SECONDS = _body_timeout()
_serving = threading.local()  # the gunicorn request this thread is answering


def close_connection_after_response() -> None:
    """Answer with `Connection: close` and close: for a body left unread or unreadable, which
    gunicorn would otherwise drain only 64 KiB of, closing anyway after saying keep-alive."""
    request = getattr(_serving, "request", None)
    if request is not None:
        request.must_close = True


class _BodyDeadlineSocket:
    """The client socket as the request's body is read from it: each recv waits at most until the
    body's deadline, then raises TimeoutError (the app answers 408)."""

    def __init__(self, sock, deadline: float) -> None:
        self._sock = sock
        self._deadline = deadline

    def recv(self, size: int) -> bytes:
        remaining = self._deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("the request body's deadline has passed")
        self._sock.settimeout(remaining)
        try:
            return self._sock.recv(size)
        finally:
            self._sock.settimeout(None)  # blocking again, as gthread keeps its sockets

    def __getattr__(self, name: str):
        return getattr(self._sock, name)


class _CapturedSocket:
    """Stands in for the client socket while gunicorn writes its HTML error page."""

    def __init__(self) -> None:
        self.data = b""

    def gettimeout(self) -> float:
        return 0.0

    def sendall(self, data: bytes) -> None:
        self.data += data


def json_error_response(status: int, reason: str, message: str) -> bytes:
    body = json.dumps(
        {
            "error": f"{reason}: {message}"[:512] if message else reason,
            "code": _CODES.get(status, "bad_request"),
        }
    ).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode("latin-1") + body


# How long a thread waits on its kept-alive connection for the next request before handing
# the connection back to the worker's poller (a client's next request follows its answer
# within a millisecond or two on a busy host; an idle client only holds the thread this long).
KEEPALIVE_LINGER_SECONDS = 0.02


class GatewayThreadWorker(ThreadWorker):
    def handle(self, conn):
        """Serve a connection's requests while the next one comes right after the answer.

        gthread hands every kept-alive connection back to the main thread's poller after each
        answer, and a thread from the pool picks it up again when the next request arrives:
        an epoll (un)registration, a future, a pipe wake-up and two thread switches per
        request, about 0.1 ms of CPU (measured: workers' CPU per request 8 % lower, wrk at
        concurrency 16). The thread waits here instead, and only while this worker holds no
        more connections than it has threads, so that no other connection waits for it.
        """
        result = super().handle(conn)
        while result is True and self.alive and self.nr_conns <= self.cfg.threads:
            if not conn.parser.unreader.buf.getvalue():  # nothing read ahead: wait on the socket
                poller = select.poll()
                poller.register(conn.sock, select.POLLIN)
                if not poller.poll(KEEPALIVE_LINGER_SECONDS * 1000):
                    break
            result = super().handle(conn)
        return result

    def handle_request(self, req, conn):
        unreader = conn.parser.unreader
        sock = unreader.sock
        unreader.sock = _BodyDeadlineSocket(sock, time.monotonic() + BODY_TIMEOUT_SECONDS)
        _serving.request = req
        try:
            return super().handle_request(req, conn)
        finally:
            _serving.request = None
            unreader.sock = sock

    def set_accept_enabled(self, enabled: bool) -> None:
        super().set_accept_enabled(enabled)
        if not enabled and not self.alive:  # shutting down, not merely at worker_connections
            for listener in self.sockets:
                listener.close()

    def handle_error(self, req, client, addr, exc):
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
