"""Hostile connections against the real gateway (gunicorn): malformed chunked bodies, requests
gunicorn refuses itself, bodies that arrive too slowly or never: each gets a JSON error, never a
hang or a dead worker.
"""

from __future__ import annotations

import json
import socket
import time

import pytest
import requests

from tests.conftest import running_gateway
from tests.gateway_hostile_helpers import PNG, TIMEOUT, predict, raw
from tests.gateway_stack import gunicorn_pids


@pytest.fixture(scope="module", autouse=True)
def processes_at_start(gateway_url):
    """gunicorn's master and workers before the first test here (a killed worker is replaced)."""
    return gunicorn_pids(gateway_url)


def _raw_http(url: str, request: bytes) -> tuple[int, dict]:
    status, _, body = _raw_exchange(url, request)
    return status, body


def _raw_exchange(url: str, request: bytes) -> tuple[int, bytes, dict]:
    """(status, head, JSON body) of one request sent as these bytes; reads until the server closes."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), head, json.loads(body)


CHUNKED_POST = (b"POST /v1/models/mnist:predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"Transfer-Encoding: chunked\r\n")


@pytest.mark.parametrize("content_type", [b"image/png", b"multipart/form-data; boundary=b",
                                          b"application/json"])
@pytest.mark.parametrize(
    "chunks", [b"zz\r\nabc\r\n0\r\n\r\n", b"3\r\nabcXX0\r\n\r\n", b"3;\x01\r\nabc\r\n0\r\n\r\n"],
    ids=["size", "terminator", "extension"],
)
def test_a_malformed_chunked_body_is_a_400(gateway_url, content_type, chunks):
    status, head, body = _raw_exchange(gateway_url, CHUNKED_POST + b"Content-Type: " + content_type
                                       + b"\r\n\r\n" + chunks)
    assert (status, body["code"]) == (400, "bad_request") and "chunked encoding is malformed" in body["error"]


def test_a_chunked_body_without_a_content_type_is_a_415_not_no_body(gateway_url):
    chunks = b"%x\r\n" % len(PNG) + PNG + b"\r\n0\r\n\r\n"
    status, _, body = _raw_exchange(gateway_url, CHUNKED_POST + b"\r\n" + chunks)
    assert (status, body["code"]) == (415, "unsupported_media_type")


def test_an_error_before_a_large_body_is_read_closes_the_connection(gateway_url):
    """gunicorn drops at most 64 KiB of a body left unread, then closes: the answer must say so
    (it said keep-alive, and the client's next request on the connection failed)."""
    large = b"\x00" * 1_000_000
    with requests.Session() as session:
        refused = session.post(f"{gateway_url}/v1/models/mnist:predict?top_k=0", data=large,
                               headers={"Content-Type": "image/png"}, timeout=TIMEOUT)
        assert refused.status_code == 400 and refused.headers["Connection"] == "close"
        small = session.post(f"{gateway_url}/v1/models/mnist:predict?top_k=0", data=PNG,
                             headers={"Content-Type": "image/png"}, timeout=TIMEOUT)
        assert small.status_code == 400 and small.headers["Connection"] == "keep-alive"
        assert session.post(f"{gateway_url}/v1/models/mnist:predict", timeout=TIMEOUT,
                            **raw(PNG)).status_code == 200


@pytest.mark.parametrize(
    ("what", "request_bytes", "status", "code"),
    [
        ("garbage request line", b"HELLO\r\n\r\n", 400, "bad_request"),
        (
            "a 10 kB header",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 10_000 + b"\r\n\r\n",
            431,
            "request_header_fields_too_large",
        ),
        (
            "200 headers",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\n"
            + b"".join(b"X-%d: 1\r\n" % i for i in range(200))
            + b"\r\n",
            431,
            "request_header_fields_too_large",
        ),
        (
            "invalid header name",
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Header: 1\r\n\r\n",
            400,
            "bad_request",
        ),
    ],
)
def test_requests_gunicorn_refuses_get_json_too(gateway_url, what, request_bytes, status, code):
    answered_status, body = _raw_http(gateway_url, request_bytes)
    assert answered_status == status and body["code"] == code and body["error"]


@pytest.fixture(scope="module")
def impatient_gateway(model_server, models_dir):
    """A gateway that gives a request's body 1 s to arrive."""
    settings = {"GATEWAY_WORKERS": "1", "GATEWAY_BODY_TIMEOUT_SECONDS": "1"}
    with running_gateway(model_server, models_dir, settings) as url:
        yield url


@pytest.mark.parametrize("trickle", [False, True], ids=["stalled", "trickled"])
def test_a_body_that_does_not_arrive_in_time_is_a_408(impatient_gateway, trickle):
    host, port = impatient_gateway.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as connection:
        connection.sendall(b"POST /v1/models/mnist:predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                           b"Content-Length: %d\r\n\r\n" % len(PNG) + PNG[:10])
        connection.settimeout(0.1)
        answer = b""
        for byte in PNG[10:] if trickle else []:  # a byte every 0.1 s: each read gets data in time
            try:
                answer = connection.recv(65536)
                break
            except TimeoutError:
                connection.sendall(bytes([byte]))
        connection.settimeout(TIMEOUT)
        while chunk := connection.recv(65536):
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert int(head.split()[1]) == 408 and json.loads(body)["code"] == "request_timeout"
    assert b"Connection: close" in head and time.monotonic() - started < 5
    assert predict(impatient_gateway, **raw(PNG)).status_code == 200


def test_a_client_that_hangs_up_mid_body_leaves_the_gateway_serving(gateway_url):
    host, port = gateway_url.removeprefix("http://").split(":")
    for _ in range(10):
        with socket.create_connection((host, int(port)), timeout=TIMEOUT) as connection:
            connection.sendall(
                b"POST /v1/models/mnist:predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                b"Content-Length: 100000\r\n\r\n" + PNG[:50]
            )
    started = time.monotonic()
    assert predict(gateway_url, **raw(PNG)).status_code == 200
    assert time.monotonic() - started < TIMEOUT


def test_no_worker_was_killed(gateway_url, processes_at_start):
    assert gunicorn_pids(gateway_url) == processes_at_start
