"""What the gateway tells its operators: one JSON log line per request with its id, the id
returned to the caller, and Prometheus metrics added up over all gunicorn workers."""

from __future__ import annotations

import json
import re
import time
import uuid

import numpy as np
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import encode
from tests.gateway_stack import TOKENS

TIMEOUT = 30
AUTH = {"Authorization": f"Bearer {TOKENS[0]}"}
DIGIT = encode(np.zeros((28, 28, 1), np.uint8))
PREDICT = "/v1/models/<name>:predict"


def _post(url, model="mnist", data=DIGIT, query="", headers=None):
    return requests.post(
        f"{url}/v1/models/{model}:predict{query}",
        data=data,
        timeout=TIMEOUT,
        headers={"Content-Type": "image/png", **AUTH, **(headers or {})},
    )


def _log_entries(gateway, request_id):
    deadline = time.monotonic() + 10
    while True:
        entries = []
        for line in gateway.log_lines():
            if request_id in line:
                entries.append(json.loads(line))
        if entries or time.monotonic() > deadline:
            return entries
        time.sleep(0.1)


def test_a_request_id_is_honoured_returned_and_logged_once(secured_gateway):
    request_id = f"test-{uuid.uuid4()}"
    response = _post(secured_gateway.url, headers={"X-Request-ID": request_id})
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == request_id
    assert response.headers["X-Model-Version"] == "1"
    [entry] = _log_entries(secured_gateway, request_id)
    assert entry["logger"] == "serving.gateway.requests" and entry["level"] == "INFO"
    assert {
        key: entry[key]
        for key in (
            "request_id",
            "method",
            "path",
            "endpoint",
            "status",
            "code",
            "model",
            "version",
            "images",
            "request_bytes",
        )
    } == {
        "request_id": request_id,
        "method": "POST",
        "path": "/v1/models/mnist:predict",
        "endpoint": PREDICT,
        "status": 200,
        "code": "",
        "model": "mnist",
        "version": 1,
        "images": 1,
        "request_bytes": len(DIGIT),
    }
    assert entry["duration_ms"] >= entry["preprocess_ms"] + entry["model_server_ms"] > 0


def test_a_chunked_upload_is_logged_and_measured_with_the_bytes_it_sent(secured_gateway):
    """No Content-Length: the log line's request_bytes and the size metric count what was read."""
    def bytes_sum() -> float:
        text = requests.get(f"{secured_gateway.url}/metrics", timeout=TIMEOUT).text
        samples = [sample for family in text_string_to_metric_families(text) for sample in family.samples]
        return sum(sample.value for sample in samples
                   if sample.name == "pixelgate_request_bytes_sum"
                   and sample.labels.get("endpoint") == PREDICT)

    before = bytes_sum()
    request_id = f"test-{uuid.uuid4()}"
    # A generator: requests sends it chunked.
    halves = iter([DIGIT[: len(DIGIT) // 2], DIGIT[len(DIGIT) // 2 :]])
    response = _post(secured_gateway.url, data=halves, headers={"X-Request-ID": request_id})
    assert response.status_code == 200, response.text
    sent_headers = response.request.headers
    assert "Content-Length" not in sent_headers and sent_headers["Transfer-Encoding"] == "chunked"
    [entry] = _log_entries(secured_gateway, request_id)
    assert entry["request_bytes"] == len(DIGIT)
    assert bytes_sum() - before == len(DIGIT)


def test_errors_are_logged_with_their_code(secured_gateway):
    request_id = f"test-{uuid.uuid4()}"
    response = _post(secured_gateway.url, data=b"not an image", headers={"X-Request-ID": request_id})
    assert response.status_code == 400
    [entry] = _log_entries(secured_gateway, request_id)
    assert (entry["status"], entry["code"], entry["model"]) == (400, "invalid_image", "mnist")


def test_an_unusable_request_id_is_replaced_by_a_new_one(secured_gateway):
    for given in ("has space", "x" * 129, "semi;colon", "ünïcode"):
        response = requests.get(
            f"{secured_gateway.url}/healthz", headers={"X-Request-ID": given.encode()}, timeout=TIMEOUT
        )
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"]), given
    generated = requests.get(f"{secured_gateway.url}/healthz", timeout=TIMEOUT).headers["X-Request-ID"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)


def test_the_request_log_is_one_json_object_per_line(secured_gateway):
    requests.get(f"{secured_gateway.url}/v1/models", timeout=TIMEOUT)  # a 401: logged too
    request_lines = [
        json.loads(line) for line in secured_gateway.log_lines() if '"serving.gateway.requests"' in line
    ]
    assert request_lines and all(entry["request_id"] and entry["status"] for entry in request_lines)
    assert any(entry["status"] == 401 and entry["code"] == "unauthorized" for entry in request_lines)


def _samples(url):
    text = requests.get(f"{url}/metrics", timeout=TIMEOUT).text
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_count_requests_by_model_status_and_version_over_all_workers(secured_gateway):
    url = secured_gateway.url
    before = _samples(url)
    for _ in range(6):  # spread over both workers
        assert _post(url).status_code == 200
    assert _post(url, data=b"junk").status_code == 400
    assert _post(url, model="evil<script>").status_code == 404
    assert _post(url, query="?version=99").status_code == 404
    assert requests.post(f"{url}/v1/models/mnist:predict", data=DIGIT, timeout=TIMEOUT).status_code == 401
    after = _samples(url)

    def increase(name, **labels):
        return _value(after, name, **labels) - _value(before, name, **labels)

    requests_total = "pixelgate_requests_total"
    assert increase(requests_total, endpoint=PREDICT, model="mnist", status="200", version="1") == 6
    assert increase(requests_total, endpoint=PREDICT, model="mnist", status="400", version="") == 1
    assert increase(requests_total, endpoint=PREDICT, model="mnist", status="404", version="") == 1
    assert increase(requests_total, endpoint=PREDICT, model="", status="404", version="") == 1
    assert increase(requests_total, endpoint=PREDICT, model="", status="401", version="") == 1
    assert not any("evil" in str(labels) for _, labels in after)  # hostile names never become labels
    assert increase("pixelgate_preprocess_seconds_count", model="mnist") == 6
    assert increase("pixelgate_model_server_seconds_count", model="mnist") == 6
    assert increase("pixelgate_images_per_request_count", model="mnist") == 8
    assert increase("pixelgate_request_bytes_count", endpoint=PREDICT) == 10
    assert increase("pixelgate_request_seconds_count", endpoint=PREDICT) == 10
    assert increase("pixelgate_model_server_errors_total", method="GetModelMetadata", code="NOT_FOUND") == 1
    assert _value(after, "pixelgate_requests_in_flight") == 1  # the scrape itself


def test_latency_histograms_split_preprocessing_from_the_model_server(secured_gateway):
    samples = _samples(secured_gateway.url)
    for name in ("pixelgate_preprocess_seconds", "pixelgate_model_server_seconds"):
        count = _value(samples, f"{name}_count", model="mnist")
        assert count > 0 and _value(samples, f"{name}_bucket", model="mnist", le="+Inf") == count
        assert _value(samples, f"{name}_sum", model="mnist") > 0
