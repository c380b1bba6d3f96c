"""Hostile and odd inputs against the real gateway (gunicorn): each gets a 4xx with a JSON error
that says what was wrong, never a 500, a hang or a dead worker; every image mode and format the
gateway reads gives the answer its plain PNG twin gives.
"""

from __future__ import annotations

import base64
import json
import socket
import time

import numpy as np
import pytest
import requests
from PIL import Image

from tests.conftest import running_gateway
from tests.gateway_stack import gunicorn_pids
from tests.hostile_images import (
    FUZZER_FINDINGS,
    encode,
    exif_rotated,
    gif_two_frames,
    jpeg_declaring,
    png_header_only,
    png_text_bomb,
    png_zeros,
    save,
)

TIMEOUT = 60  # per request: far beyond any honest answer; a hang fails the test instead of stalling it
DIGIT = np.zeros((28, 28), np.uint8)
DIGIT[6:22, 12:16] = 255  # a "1", enough for requests that must get through
PNG = encode(DIGIT)
LIMIT = 20 * 1024 * 1024  # the default MAX_CONTENT_LENGTH


def predict(url, name="mnist", query="", **kwargs):
    return requests.post(f"{url}/v1/models/{name}:predict{query}", timeout=TIMEOUT, **kwargs)


def raw(payload, content_type="image/png"):
    return {"data": payload, "headers": {"Content-Type": content_type}}


def b64_json(*payloads):
    return {"json": {"instances": [{"b64": base64.b64encode(p).decode()} for p in payloads]}}


# (what, model name, query, request keyword arguments, status, code)
HOSTILE_REQUESTS = [
    ("empty raw body", "mnist", "", raw(b""), 400, "empty_image"),
    ("no body, no content type", "mnist", "", {}, 400, "missing_image"),
    ("empty multipart file", "mnist", "", {"files": {"image": b""}}, 400, "empty_image"),
    ("non-image bytes", "mnist", "", raw(b"hello, I am not a picture"), 400, "invalid_image"),
    ("HTML posing as PNG", "mnist", "", raw(b"<html><script>alert(1)</script></html>"), 400, "invalid_image"),
    ("truncated PNG", "mnist", "", raw(PNG[: len(PNG) // 2]), 400, "invalid_image"),
    ("truncated JPEG", "mnist", "", raw(encode(DIGIT, "JPEG")[:200], "image/jpeg"), 400, "invalid_image"),
    ("PNG signature only", "mnist", "", raw(PNG[:8]), 400, "invalid_image"),
    ("format not accepted (PPM)", "mnist", "", raw(encode(DIGIT, "PPM")), 400, "invalid_image"),
    ("format not accepted (ICO)", "mnist", "", raw(encode(DIGIT, "ICO")), 400, "invalid_image"),
    (
        "PNG declaring 100000x100000",
        "mnist",
        "",
        raw(png_header_only(100_000, 100_000)),
        400,
        "image_too_large",
    ),
    (
        "PNG declaring 7000x7000 (over MAX_IMAGE_PIXELS)",
        "mnist",
        "",
        raw(png_header_only(7000, 7000)),
        400,
        "image_too_large",
    ),
    ("PNG 30000x10 (over MAX_IMAGE_SIDE)", "mnist", "", raw(png_zeros(30_000, 10)), 400, "image_too_large"),
    (
        "JPEG declaring 65000x65000",
        "mnist",
        "",
        raw(jpeg_declaring(65_000, 65_000), "image/jpeg"),
        400,
        "image_too_large",
    ),
    (
        "6 x 36-megapixel PNGs (over MAX_REQUEST_PIXELS)",
        "mnist",
        "",
        {"files": [("image", png_zeros(6000, 6000))] * 6},
        400,
        "image_too_large",
    ),
    ("zTXt chunk inflating to 64 MB", "mnist", "", raw(png_text_bomb()), 400, "invalid_image"),
    (
        "TIFF with RATIONAL strip offsets (fuzzer)",
        "mnist",
        "",
        raw(FUZZER_FINDINGS["tiff-rational-strip-offsets"], "image/tiff"),
        400,
        "invalid_image",
    ),
    ("text/plain body", "mnist", "", raw(b"abc", "text/plain"), 415, "unsupported_media_type"),
    ("form-urlencoded body", "mnist", "", {"data": {"image": "abc"}}, 415, "unsupported_media_type"),
    ("XML body", "mnist", "", raw(b"<a/>", "application/xml"), 415, "unsupported_media_type"),
    ("multipart without the image field", "mnist", "", {"files": {"picture": PNG}}, 400, "missing_image"),
    (
        "multipart image sent as a text field",
        "mnist",
        "",
        {"files": {"image": (None, "abc")}},
        400,
        "missing_image",
    ),
    (
        "multipart without boundary",
        "mnist",
        "",
        raw(b"--x\r\n", "multipart/form-data"),
        400,
        "invalid_request",
    ),
    (
        "65 images (over MAX_IMAGES_PER_REQUEST)",
        "mnist",
        "",
        {"files": [("image", PNG)] * 65},
        413,
        "too_many_images",
    ),
    ("65 JSON instances", "mnist", "", b64_json(*[PNG] * 65), 413, "too_many_images"),
    ("bad base64", "mnist", "", {"json": {"instances": [{"b64": "***"}]}}, 400, "invalid_base64"),
    ("base64 of non-ASCII text", "mnist", "", {"json": {"instances": [{"b64": "é"}]}}, 400, "invalid_base64"),
    ("base64 of garbage", "mnist", "", b64_json(b"\x00" * 100), 400, "invalid_image"),
    ("b64 is a number", "mnist", "", {"json": {"instances": [{"b64": 7}]}}, 400, "invalid_json"),
    ("instances empty", "mnist", "", {"json": {"instances": []}}, 400, "invalid_json"),
    ("JSON array body", "mnist", "", {"json": [1, 2]}, 400, "invalid_json"),
    ("truncated JSON", "mnist", "", raw(b'{"instances": [', "application/json"), 400, "invalid_json"),
    ("JSON nested 100000 deep", "mnist", "", raw(b"[" * 100_000, "application/json"), 400, "invalid_json"),
    (
        "JSON that is not UTF-8",
        "mnist",
        "",
        raw(b'{"instances": "\xff\xfe"}', "application/json"),
        400,
        "invalid_json",
    ),
    ("unknown model", "resnet", "", raw(PNG), 404, "model_not_found"),
    ("unknown version", "mnist", "?version=99", raw(PNG), 404, "model_not_found"),
    ("unknown label", "mnist", "?label=canary", raw(PNG), 404, "model_not_found"),
    ("model name ../", "..", "", raw(PNG), 404, "model_not_found"),
    ("model name %2e%2e", "%2e%2e", "", raw(PNG), 404, "model_not_found"),
    ("model name ../../etc/passwd", "..%2F..%2Fetc%2Fpasswd", "", raw(PNG), 404, "not_found"),
    ("model name with NUL", "mnist%00", "", raw(PNG), 404, "model_not_found"),
    ("model name with newline", "mnist%0A", "", raw(PNG), 404, "model_not_found"),
    ("model name of 3000 characters", "m" * 3000, "", raw(PNG), 404, "model_not_found"),
    ("model name of 10000 characters", "m" * 10_000, "", raw(PNG), 414, "uri_too_long"),
    ("model name in Cyrillic", "%D0%BC%D0%BD%D0%B8%D1%81%D1%82", "", raw(PNG), 404, "model_not_found"),
    ("top_k=0", "mnist", "?top_k=0", raw(PNG), 400, "invalid_top_k"),
    ("top_k=11 (over MAX_TOP_K)", "mnist", "?top_k=11", raw(PNG), 400, "invalid_top_k"),
    ("top_k=-1", "mnist", "?top_k=-1", raw(PNG), 400, "invalid_top_k"),
    ("top_k=abc", "mnist", "?top_k=abc", raw(PNG), 400, "invalid_top_k"),
    ("top_k=1e3", "mnist", "?top_k=1e3", raw(PNG), 400, "invalid_top_k"),
    ("top_k=² (a Unicode digit)", "mnist", "?top_k=%C2%B2", raw(PNG), 400, "invalid_top_k"),
    ("top_k with 30 digits", "mnist", "?top_k=" + "9" * 30, raw(PNG), 400, "invalid_top_k"),
    ("version=abc", "mnist", "?version=abc", raw(PNG), 400, "invalid_version"),
    ("version=0", "mnist", "?version=0", raw(PNG), 400, "invalid_version"),
    ("version and label together", "mnist", "?version=1&label=stable", raw(PNG), 400, "invalid_version"),
    ("label with a path", "mnist", "?label=..%2Fx", raw(PNG), 400, "invalid_version"),
    ("label with NUL", "mnist", "?label=%00", raw(PNG), 400, "invalid_version"),
]


@pytest.fixture(scope="module")
def processes_at_start(gateway_url):
    """gunicorn's master and workers before the first hostile request (a killed worker is replaced)."""
    return gunicorn_pids(gateway_url)


@pytest.mark.parametrize(
    ("what", "name", "query", "kwargs", "status", "code"),
    HOSTILE_REQUESTS,
    ids=[case[0] for case in HOSTILE_REQUESTS],
)
def test_hostile_requests_get_a_4xx_json_error(
    gateway_url, processes_at_start, what, name, query, kwargs, status, code
):
    response = predict(gateway_url, name, query, **kwargs)
    assert (response.status_code, response.headers["Content-Type"]) == (status, "application/json"), (
        response.text
    )
    body = response.json()
    assert body["code"] == code and isinstance(body["error"], str) and body["error"]


_IMAGE_PART = b'--b\r\nContent-Disposition: form-data; name="image"; filename="a.png"\r\n\r\n' + PNG


@pytest.mark.parametrize(
    ("content_type", "body", "problem"),
    [
        ("multipart/form-data", _IMAGE_PART + b"\r\n--b--\r\n", "no usable boundary parameter"),
        ("multipart/form-data; boundary=other", _IMAGE_PART + b"\r\n--b--\r\n",
         "no part starts with the boundary"),
        ("multipart/form-data; boundary=b", _IMAGE_PART, "ends before the closing boundary"),
        ("multipart/form-data; boundary=b", b"--b\r\nname=image\r\n\r\n" + PNG + b"\r\n--b--\r\n",
         "Content-Disposition"),
        ("multipart/form-data; boundary=b",
         _IMAGE_PART.replace(b'"a.png"', b'"\xff.png"') + b"\r\n--b--\r\n", "not UTF-8"),
    ],
    ids=["no boundary", "another boundary", "cut short", "no part headers", "file name not UTF-8"],
)
def test_a_malformed_multipart_body_is_a_400_that_says_what_is_wrong(
    gateway_url, content_type, body, problem
):
    # Werkzeug drops a body it cannot parse without a word: this was "no field 'image'".
    response = predict(gateway_url, "mnist", "", **raw(body, content_type))
    assert response.status_code == 400 and response.json()["code"] == "invalid_request"
    assert response.json()["error"].startswith("the multipart body cannot be parsed: ")
    assert problem in response.json()["error"]


def test_body_over_the_limit_gets_413_with_content_length_or_chunked(gateway_url):
    oversized = b"\x00" * (LIMIT + 1)
    declared = predict(gateway_url, **raw(oversized))
    chunked = predict(
        gateway_url,
        data=iter([oversized[: LIMIT // 2], oversized[LIMIT // 2 :]]),
        headers={"Content-Type": "image/png"},
    )
    for response in (declared, chunked):
        assert response.status_code == 413 and response.json()["code"] == "payload_too_large"


def test_a_large_image_under_the_limits_is_answered(gateway_url):
    response = predict(gateway_url, **raw(png_zeros(6000, 6000)))  # 36 megapixels in 35 kB
    assert response.status_code == 200, response.text


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


# Every mode and format the gateway reads must give the answer its plain PNG twin gives.
def _digit_variants(digit: np.ndarray) -> dict[str, bytes]:
    rgb = np.dstack([digit] * 3)
    opaque = np.dstack([digit, np.full_like(digit, 255)])
    return {
        "JPEG quality 100": encode(digit, "JPEG", quality=100),
        "GIF": encode(digit, "GIF"),
        "BMP": encode(digit, "BMP"),
        "WebP lossless": encode(digit, "WEBP", lossless=True),
        "TIFF": encode(digit, "TIFF"),
        "RGB PNG": encode(rgb),
        "CMYK TIFF": encode(rgb, "TIFF", mode="CMYK"),
        "CMYK JPEG": encode(rgb, "JPEG", mode="CMYK", quality=100),
        "16-bit PNG": save(Image.fromarray(digit.astype(np.uint16) * 257), "PNG"),
        "32-bit float TIFF": save(Image.fromarray(digit.astype(np.float32)), "TIFF"),
        "palette PNG": save(Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "opaque grayscale+alpha PNG": encode(opaque),
        "opaque RGBA PNG": encode(np.dstack([rgb, np.full_like(digit, 255)])),
        "EXIF-rotated PNG": exif_rotated(digit, "PNG"),
        "EXIF-rotated JPEG": exif_rotated(digit, "JPEG"),
        "animated GIF (first frame)": gif_two_frames(digit, 255 - digit),
    }


LOSSY = {"JPEG quality 100", "CMYK JPEG", "EXIF-rotated JPEG"}


def test_every_mode_and_format_gives_the_answer_of_its_png_twin(gateway_url, test_images):
    digits = test_images["mnist"][0][:4, :, :, 0]
    for digit in digits:
        expected = predict(gateway_url, **raw(encode(digit))).json()["predictions"][0]
        for what, payload in _digit_variants(digit).items():
            response = predict(gateway_url, **raw(payload, "application/octet-stream"))
            assert response.status_code == 200, (what, response.text)
            answer = response.json()["predictions"][0]
            if what in LOSSY:
                assert answer["class_index"] == expected["class_index"], what
                assert answer["probability"] == pytest.approx(expected["probability"], abs=0.05), what
            else:
                assert answer == expected, what


def test_transparency_is_composited_onto_white(gateway_url):
    colors = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    transparent = encode(np.dstack([colors, np.zeros((32, 32), np.uint8)]))  # any colour, alpha 0
    white = encode(np.full((32, 32, 3), 255, np.uint8))
    answers = [predict(gateway_url, "cifar10", "?top_k=10", **raw(p)).json() for p in (transparent, white)]
    assert answers[0]["predictions"] == answers[1]["predictions"]


def test_no_worker_was_killed_and_nothing_answered_500(gateway_url, processes_at_start):
    assert gunicorn_pids(gateway_url) == processes_at_start
    metrics = requests.get(f"{gateway_url}/metrics", timeout=TIMEOUT).text
    server_errors = [
        line
        for line in metrics.splitlines()
        if line.startswith("pixelgate_requests_total") and 'status="5' in line
    ]
    assert not any('status="500"' in line for line in server_errors), server_errors
    assert requests.get(f"{gateway_url}/healthz", timeout=TIMEOUT).status_code == 200
