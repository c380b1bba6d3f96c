"""Hostile and odd requests against the real gateway (gunicorn): each gets a 4xx with a JSON error
that says what was wrong, never a 500 or a dead worker; the bodies over and under the limits.
"""

from __future__ import annotations

import base64

import pytest
import requests

from tests.gateway_hostile_helpers import DIGIT, PNG, TIMEOUT, predict, raw
from tests.gateway_stack import gunicorn_pids
from tests.hostile_images import (
    FUZZER_FINDINGS,
    encode,
    jpeg_declaring,
    png_header_only,
    png_text_bomb,
    png_zeros,
)

LIMIT = 20 * 1024 * 1024  # the default MAX_CONTENT_LENGTH


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
