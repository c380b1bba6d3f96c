"""The SDK's retries against real sockets: a dead port, a server that drops connections, one
that never answers, and a real gateway whose model server is down (503) and then comes back.
Every retry is logged by the "pixelgate" logger, which is how attempts are counted here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time

import pytest
from pixelgate import AsyncClient, Client, PixelgateError

from serving import stack
from tests.conftest import encode, send_json


def retries_logged(caplog) -> int:
    return sum(
        record.name == "pixelgate" and record.getMessage().startswith("retrying") for record in caplog.records
    )


class DroppingServer:
    """Accepts TCP connections and counts them; closes each at once, or holds it open unanswered."""

    def __init__(self, answer_never: bool = False):
        self.connections = 0
        self._held: list[socket.socket] = []
        self._answer_never = answer_never
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._socket.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return
            self.connections += 1
            if self._answer_never:
                self._held.append(connection)
            else:
                connection.close()

    def close(self) -> None:
        for sock in [self._socket, *self._held]:
            _close(sock)


class Relay:
    """A TCP relay from `port` to `target_port`, listening only once started: the model server
    "comes back" for a gateway that was told to use `port`."""

    def __init__(self, port: int, target_port: int):
        self.port, self.target_port = port, target_port
        self._sockets: list[socket.socket] = []

    def start(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))
        self._sockets.append(listener)
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                incoming, _ = listener.accept()
            except OSError:
                return
            outgoing = socket.create_connection(("127.0.0.1", self.target_port))
            self._sockets += [incoming, outgoing]
            for source, sink in ((incoming, outgoing), (outgoing, incoming)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, sink):
                _close(end)

    def close(self) -> None:
        for sock in self._sockets:
            _close(sock)


def _close(sock: socket.socket) -> None:
    """shutdown() first: on Linux, close() alone does not wake a thread blocked in accept() or recv()."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()


@pytest.fixture(scope="module")
def orphan_gateway(models_dir):
    """A real gateway told to use a model server port where nothing listens yet; yields (url, that port)."""
    model_server_port, port = stack.free_port(), stack.free_port()
    process = stack.start_gateway(
        port,
        f"127.0.0.1:{model_server_port}",
        models_dir,
        env={"GATEWAY_WORKERS": "1", "REQUEST_TIMEOUT_SECONDS": "3"},
    )
    try:
        stack.wait_for_http(f"http://127.0.0.1:{port}/healthz", process)
        yield f"http://127.0.0.1:{port}", model_server_port
    finally:
        stack.stop(process)


def test_a_dead_port_is_retried_a_bounded_number_of_times(caplog):
    caplog.set_level(logging.INFO, logger="pixelgate")
    port = stack.free_port()
    started = time.perf_counter()
    with (
        Client(f"http://127.0.0.1:{port}", retries=3, backoff=0.05) as client,
        pytest.raises(PixelgateError) as raised,
    ):
        client.predict(b"image", model="mnist")
    elapsed = time.perf_counter() - started
    assert raised.value.code == "connection_error" and raised.value.status is None
    assert retries_logged(caplog) == 3
    print(f"dead port: 4 attempts, gave up after {elapsed:.2f}s")
    with Client(f"http://127.0.0.1:{port}", retries=0) as client, pytest.raises(PixelgateError):
        client.models()
    assert retries_logged(caplog) == 3


def test_dropped_connections_are_retried_then_reported():
    server = DroppingServer()
    try:
        with Client(server.url, retries=2, backoff=0.01) as client, pytest.raises(PixelgateError) as raised:
            client.predict(b"image", model="mnist")
    finally:
        server.close()
    assert raised.value.code == "connection_error"
    assert server.connections == 3


class MisconfiguredModelServer:
    """An HTTP server that answers every request 503 `model_misconfigured`, as the gateway does
    for a model whose export it cannot use, and counts the requests."""

    def __init__(self):
        import http.server

        counter = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                counter.requests += 1
                answer = b'{"error": "model \'mnist\' version 1: unusable", "code": "model_misconfigured"}'
                send_json(self, 503, answer)

            def log_message(self, *args):
                pass

        self.requests = 0
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def test_a_misconfigured_model_is_not_retried(test_images, caplog):
    server = MisconfiguredModelServer()
    digit = encode(test_images["mnist"][0][0])
    try:
        with (
            caplog.at_level(logging.INFO, logger="pixelgate"),
            Client(server.url, retries=3, backoff=0.01) as client,
            pytest.raises(PixelgateError) as raised,
        ):
            client.predict(digit, model="mnist")
        assert (raised.value.status, raised.value.code) == (503, "model_misconfigured")

        async def ask_async() -> None:
            async with AsyncClient(server.url, retries=3, backoff=0.01) as async_client:
                await async_client.predict(digit, model="mnist")

        with caplog.at_level(logging.INFO, logger="pixelgate"), pytest.raises(PixelgateError):
            asyncio.run(ask_async())
        assert server.requests == 2 and retries_logged(caplog) == 0
    finally:
        server.close()


def test_a_slow_answer_is_a_timeout_and_is_not_retried():
    server = DroppingServer(answer_never=True)
    try:
        with Client(server.url, timeout=0.5, retries=3) as client, pytest.raises(PixelgateError) as raised:
            client.predict(b"image", model="mnist")
    finally:
        server.close()
    assert raised.value.code == "timeout" and raised.value.status is None
    assert server.connections == 1


def test_503_from_a_gateway_without_model_server_is_retried_then_raised(orphan_gateway, test_images, caplog):
    caplog.set_level(logging.INFO, logger="pixelgate")
    url, _ = orphan_gateway
    started = time.perf_counter()
    with Client(url, retries=2, backoff=0.05) as client:
        with pytest.raises(PixelgateError) as raised:
            client.predict(encode(test_images["mnist"][0][0]), model="mnist")
        assert client.ready() is False
        assert client.health().models["mnist"].startswith("UNAVAILABLE")
    elapsed = time.perf_counter() - started
    assert raised.value.status == 503 and raised.value.code == "model_server_unavailable"
    assert retries_logged(caplog) == 2
    print(f"503: 3 attempts, gave up after {elapsed:.2f}s")


def test_503_is_retried_until_the_model_server_is_back(orphan_gateway, model_server, test_images, caplog):
    """The first attempt gets a 503; the relay to the real model server starts on the first retry;
    a later attempt is answered. The gateway itself is never restarted."""
    url, model_server_port = orphan_gateway
    relay = Relay(model_server_port, int(model_server.rsplit(":", 1)[1]))

    class StartRelayOnFirstRetry(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if record.getMessage().startswith("retrying") and not relay._sockets:
                relay.start()

    handler = StartRelayOnFirstRetry()
    logging.getLogger("pixelgate").addHandler(handler)
    caplog.set_level(logging.INFO, logger="pixelgate")
    image, label = test_images["mnist"][0][0], test_images["mnist"][1][0]
    try:
        with Client(url, retries=10, backoff=0.2, max_backoff=1.0) as client:
            started = time.perf_counter()
            result = client.predict(encode(image), model="mnist")
            elapsed = time.perf_counter() - started
    finally:
        logging.getLogger("pixelgate").removeHandler(handler)
        relay.close()
    assert result.model == "mnist" and result.version == 1
    assert result.predictions[0].label == str(label)
    assert 1 <= retries_logged(caplog) <= 10
    print(f"recovered after {retries_logged(caplog)} retries in {elapsed:.2f}s")


def test_async_client_retries_the_same_way(orphan_gateway, test_images, caplog):
    caplog.set_level(logging.INFO, logger="pixelgate")
    url, _ = orphan_gateway
    server = DroppingServer()

    async def attempts():
        async with AsyncClient(url, retries=1, backoff=0.01) as client:
            with pytest.raises(PixelgateError) as unavailable:
                await client.predict(encode(test_images["mnist"][0][0]), model="mnist")
        async with AsyncClient(server.url, retries=2, backoff=0.01) as client:
            with pytest.raises(PixelgateError) as dropped:
                await client.models()
        return unavailable.value, dropped.value

    try:
        unavailable, dropped = asyncio.run(attempts())
    finally:
        server.close()
    assert unavailable.status == 503 and dropped.code == "connection_error"
    assert server.connections == 3
    assert retries_logged(caplog) == 1 + 2
