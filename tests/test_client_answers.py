"""The SDK against servers that answer something other than the gateway's JSON: another server
on the port (TF Serving's REST API, a proxy's error page), a wrong URL, a shape it does not know.
Each is a PixelgateError (`invalid_response`, or the error the status carries), never a KeyError."""

from __future__ import annotations

import asyncio
import http.server
import json
import threading

import pytest
from pixelgate import AsyncClient, Client, Health, PixelgateError
from pixelgate.cli import main as cli_main

DIGIT = b"\x89PNG\r\n\x1a\n not decoded by these servers"


class ScriptedServer:
    """Answers every GET and POST with `status`, `content_type` and `body`, as set by the test."""

    def __init__(self):
        script = self
        self.status, self.content_type, self.body = 200, "application/json", b"{}"

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                self.send_response(script.status)
                self.send_header("Content-Type", script.content_type)
                self.send_header("Content-Length", str(len(script.body)))
                self.end_headers()
                self.wfile.write(script.body)

            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.do_GET()

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def answer(self, status: int, body: object, content_type: str = "application/json") -> None:
        self.status, self.content_type = status, content_type
        self.body = body if isinstance(body, bytes) else json.dumps(body).encode()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def server():
    scripted = ScriptedServer()
    yield scripted
    scripted.close()


def call(url: str, method: str, use_async: bool):
    """Client(url).<method>(...) or the same awaited on an AsyncClient; no retries."""
    arguments = {
        "predict": ((DIGIT,), {"model": "mnist"}),
        "models": ((), {}),
        "model": (("mnist",), {}),
        "health": ((), {}),
    }[method]
    if not use_async:
        with Client(url, retries=0) as client:
            return getattr(client, method)(*arguments[0], **arguments[1])

    async def run():
        async with AsyncClient(url, retries=0) as client:
            return await getattr(client, method)(*arguments[0], **arguments[1])

    return asyncio.run(run())


WRONG_SHAPES = [
    # TF Serving's REST API on the gateway's port: GET /v1/models/mnist answers the version status.
    ("model", {"model_version_status": [{"version": "1", "state": "AVAILABLE"}]}, "KeyError"),
    ("models", {"models": {"mnist": "AVAILABLE"}}, "TypeError"),
    ("models", ["mnist"], "TypeError"),
    ("predict", {"model": "mnist", "version": 1}, "KeyError"),
    ("predict", {"model": "mnist", "version": 1, "predictions": [{"label": "7"}]}, "KeyError"),
    ("predict", {"model": "mnist", "version": 1, "predictions": []}, "0 predictions for 1 images"),
    ("predict", {"predictions": [[0.1, 0.9]]}, "KeyError"),  # TF Serving REST's :predict answer
]


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(("method", "body", "said"), WRONG_SHAPES)
def test_a_200_in_another_shape_is_an_invalid_response(server, method, body, said, use_async):
    server.answer(200, body)
    with pytest.raises(PixelgateError) as raised:
        call(server.url, method, use_async)
    assert (raised.value.code, raised.value.status) == ("invalid_response", 200)
    assert said in raised.value.message and "pixelgate gateway" in raised.value.message


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_an_error_page_that_is_not_the_gateways_json_is_an_invalid_response(server, use_async):
    server.answer(502, b"<html><body><h1>502 Bad Gateway</h1>\n</body></html>", "text/html")
    with pytest.raises(PixelgateError) as raised:
        call(server.url, "predict", use_async)
    assert (raised.value.code, raised.value.status) == ("invalid_response", 502)
    assert "text/html" in raised.value.message and "502 Bad Gateway" in raised.value.message


def test_an_error_without_the_gateways_code_is_an_invalid_response(server):
    """TF Serving's REST port answers {"error": ...} without a code: not the gateway."""
    server.answer(400, {"error": "Missing model name in request."})
    with pytest.raises(PixelgateError) as raised:
        call(server.url, "models", use_async=False)
    assert (raised.value.code, raised.value.status) == ("invalid_response", 400)
    assert "Missing model name" in raised.value.message


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_health_reads_only_the_gateways_readiness_answers(server, use_async):
    server.answer(200, {"ready": True, "models": {"mnist": "AVAILABLE"}})
    assert call(server.url, "health", use_async) == Health(ready=True, models={"mnist": "AVAILABLE"})
    server.answer(503, {"ready": False, "models": {"mnist": "LOADING"}})
    assert call(server.url, "health", use_async) == Health(ready=False, models={"mnist": "LOADING"})

    # Not "not ready": the URL is wrong (a 404 page), a proxy refuses, or it is another server.
    for status, body, content_type, code in [
        (404, b"<h1>Not Found</h1>", "text/html", "invalid_response"),
        (404, {"error": "no such route", "code": "not_found"}, "application/json", "not_found"),
        (401, {"error": "token wanted", "code": "unauthorized"}, "application/json", "unauthorized"),
        (200, {"status": "ok"}, "application/json", "invalid_response"),
        (503, b"Service Unavailable", "text/plain", "invalid_response"),
    ]:
        server.answer(status, body, content_type)
        with pytest.raises(PixelgateError) as raised:
            call(server.url, "health", use_async)
        assert (raised.value.code, raised.value.status) == (code, status), body


def test_predict_folder_stops_on_an_answer_it_cannot_read(server, tmp_path):
    (tmp_path / "seven.png").write_bytes(DIGIT)
    server.answer(200, {"model": "mnist", "version": 1, "predictions": []})
    with Client(server.url, retries=0) as client, pytest.raises(PixelgateError) as raised:
        client.predict_folder(tmp_path, model="mnist", progress=False)
    assert raised.value.code == "invalid_response"


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("http://localhost:819o", "invalid gateway URL 'http://localhost:819o'"),
        ("localhost:8000", "did you mean http://localhost:8000?"),
        ("ftp://example.com", "http(s)://host[:port]"),
        ("http://", "http(s)://host[:port]"),
        ("", "http(s)://host[:port]"),
        ("http://127.0.0.1:99999", "Port out of range"),  # httpx would wrap it to port 34463
        ("http://localhost:8000/?key=abc", "has a query or fragment"),
        ("http:/localhost:8000", "got 'http:/localhost:8000'"),
    ],
)
def test_a_malformed_gateway_url_is_a_value_error(url, said):
    for client_class in (Client, AsyncClient):
        with pytest.raises(ValueError) as raised:
            client_class(url)
        assert said in str(raised.value)
        assert "did you mean http://http" not in str(raised.value)


def test_a_gateway_url_with_a_path_or_stray_spaces_is_kept_as_meant(server):
    server.answer(200, {"models": []})
    with Client(f" {server.url}/ ") as client:
        assert client.base_url == server.url and client.models() == []
    with Client("https://[::1]:8443/pixelgate/") as client:
        assert client.base_url == "https://[::1]:8443/pixelgate"


def test_the_cli_says_what_is_wrong_with_the_url(capsys):
    assert cli_main(["--url", "http://localhost:819o", "health"]) == 1
    error = capsys.readouterr().err
    assert "invalid gateway URL" in error and "Traceback" not in error
    assert cli_main(["--url", "http://localhost:819o", "--json", "models"]) == 1
    assert json.loads(capsys.readouterr().out)["code"] == "usage_error"
