"""The Open Inference Protocol's REST API (`/v2/...`) with raw HTTP: routes, JSON and binary
tensors, the classification extension, and every malformed request answered 400/404 with
`{"error": ...}`, never a 500 or a hang, the server alive afterwards.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import requests

from serving.model_server import metrics
from tests.oip_clients.harness import LABELS, MODEL, images, oip_server, tf_serving_predict

__all__ = ["oip_server"]  # the fixture, imported for pytest

HEADER = "Inference-Header-Content-Length"


def _input(batch: np.ndarray, **fields) -> dict:
    return {"name": "images", "datatype": "FP32", "shape": list(batch.shape), **fields}


def _binary_body(document: dict, *chunks: bytes) -> tuple[bytes, dict[str, str]]:
    header = json.dumps(document).encode()
    return header + b"".join(chunks), {HEADER: str(len(header)), "Content-Type": "application/octet-stream"}


def _infer(server, body, headers=None, path=f"/v2/models/{MODEL}/infer") -> requests.Response:
    return requests.post(server.rest + path, data=body, headers=headers or {}, timeout=30)


def test_server_routes(oip_server):
    get = lambda path: requests.get(oip_server.rest + path, timeout=30)  # noqa: E731
    assert get("/v2").json()["extensions"] == ["binary_tensor_data", "classification"]
    assert (get("/v2/health/live").status_code, get("/v2/health/live").json()) == (200, {"live": True})
    assert (get("/v2/health/ready").status_code, get("/v2/health/ready").json()) == (200, {"ready": True})
    metadata = get(f"/v2/models/{MODEL}/versions/1").json()
    assert metadata == {
        "name": MODEL,
        "versions": ["1", "2"],
        "platform": "tensorflow_savedmodel",
        "inputs": [{"name": "images", "datatype": "FP32", "shape": [-1, 28, 28, 1]}],
        "outputs": [{"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}],
    }
    assert get(f"/v2/models/{MODEL}").json() == metadata
    assert get(f"/v2/models/{MODEL}/ready").json() == {"name": MODEL, "ready": True}
    assert get(f"/v2/models/{MODEL}/versions/2/ready").status_code == 200
    assert get(f"/v2/models/{MODEL}/versions/9/ready").status_code == 404
    assert get(f"/v2/models/{MODEL}/versions/stable/ready").json() == {"name": MODEL, "ready": True}
    assert get(f"/v2/models/{MODEL}/versions/beta/ready").json() == {
        "error": "Unrecognized servable version label: beta"
    }
    assert get("/v2/models/nope").status_code == 404


def test_json_infer_equals_predict_and_is_counted(oip_server):
    batch = images(4, seed=1)
    before = metrics.REQUEST_COUNT.value(MODEL, "OK")
    document = {"id": "r-1", "inputs": [_input(batch, data=batch.tolist())]}
    answer = _infer(oip_server, json.dumps(document))
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert (body["model_name"], body["model_version"], body["id"]) == (MODEL, "2", "r-1")
    (output,) = body["outputs"]
    assert (output["name"], output["datatype"], output["shape"]) == ("probabilities", "FP32", [4, 10])
    expected = tf_serving_predict(oip_server.grpc, batch)
    np.testing.assert_allclose(np.reshape(output["data"], (4, 10)), expected, rtol=0, atol=1e-6)
    # Flat data (the protocol allows both) and an explicit version.
    flat = {"inputs": [_input(batch, data=batch.reshape(-1).tolist())]}
    # A version label picks the version as in TF Serving's API.
    answer = _infer(oip_server, json.dumps(flat), path=f"/v2/models/{MODEL}/versions/stable/infer").json()
    assert answer["model_version"] == "1"
    np.testing.assert_allclose(
        np.reshape(answer["outputs"][0]["data"], (4, 10)),
        tf_serving_predict(oip_server.grpc, batch, 1),
        atol=1e-6,
    )
    assert metrics.REQUEST_COUNT.value(MODEL, "OK") >= before + 2  # + the Predicts above


@pytest.mark.parametrize("per_output", [True, False])
def test_binary_infer(oip_server, per_output):
    batch = images(3, seed=2)
    document: dict = {"inputs": [_input(batch, parameters={"binary_data_size": batch.nbytes})]}
    if per_output:
        document["outputs"] = [{"name": "probabilities", "parameters": {"binary_data": True}}]
    else:
        document["parameters"] = {"binary_data_output": True}
    answer = _infer(oip_server, *_binary_body(document, batch.tobytes()))
    assert answer.status_code == 200, answer.text
    assert answer.headers["Content-Type"] == "application/octet-stream"
    length = int(answer.headers[HEADER])
    header = json.loads(answer.content[:length])
    assert header["outputs"][0]["parameters"] == {"binary_data_size": 3 * 10 * 4}
    values = np.frombuffer(answer.content[length:], dtype="<f4").reshape(3, 10)
    np.testing.assert_allclose(values, tf_serving_predict(oip_server.grpc, batch), rtol=0, atol=1e-6)


def test_classification_extension(oip_server):
    batch = images(2, seed=3)
    outputs = [{"name": "probabilities", "parameters": {"classification": 20}}]
    answer = _infer(
        oip_server, json.dumps({"inputs": [_input(batch, data=batch.tolist())], "outputs": outputs})
    )
    (output,) = answer.json()["outputs"]
    assert (output["datatype"], output["shape"]) == ("BYTES", [2, 10])  # at most every class
    expected = tf_serving_predict(oip_server.grpc, batch)
    for row, strings in enumerate(np.reshape(output["data"], (2, 10))):
        scores = [float(item.split(":")[0]) for item in strings]
        assert scores == sorted(scores, reverse=True)
        for item in strings:
            score, index, label = item.split(":")
            assert (label, float(score)) == (
                LABELS[int(index)],
                pytest.approx(expected[row, int(index)], abs=1e-6),
            )


def _json_request(**changes) -> bytes:
    batch = images(1)
    document = {"inputs": [_input(batch, data=batch.reshape(-1).tolist())]}
    document["inputs"][0].update(changes)
    if document["inputs"][0]["data"] is None:
        del document["inputs"][0]["data"]
    return json.dumps(document).encode()


ONE_IMAGE = images(1).tobytes()
BINARY_ONE = {"inputs": [_input(images(1), parameters={"binary_data_size": len(ONE_IMAGE)})]}
_body = json.dumps(BINARY_ONE).encode()
CASES = {
    "truncated binary data": (_body + ONE_IMAGE[:100], {HEADER: str(len(_body))}, 400, "truncated"),
    "header length beyond the body": (_body + ONE_IMAGE, {HEADER: "999999"}, 400, HEADER),
    "header length inside the JSON": (_body + ONE_IMAGE, {HEADER: "20"}, 400, "not valid JSON"),
    "header length past the JSON": (_body + ONE_IMAGE, {HEADER: str(len(_body) + 4)}, 400, "not valid JSON"),
    "header length not a number": (_body + ONE_IMAGE, {HEADER: "-5"}, 400, HEADER),
    "bytes after the inputs": (_body + ONE_IMAGE + b"xx", {HEADER: str(len(_body))}, 400, "after the inputs"),
    "byte size not matching the shape": (
        json.dumps({"inputs": [_input(images(2), parameters={"binary_data_size": len(ONE_IMAGE)})]}).encode()
        + ONE_IMAGE,
        {
            HEADER: str(
                len(json.dumps({"inputs": [_input(images(2), parameters={"binary_data_size": 3136})]}))
            )
        },
        400,
        "do not match shape [2, 28, 28, 1]",
    ),
    "data count not matching the shape": (_json_request(shape=[2, 28, 28, 1]), {}, 400, "784 elements"),
    "wrong shape": (_json_request(shape=[1, 784]), {}, 400, "Cannot feed value of shape (1, 784)"),
    "negative shape": (_json_request(shape=[-1, 28, 28, 1]), {}, 400, "non-negative"),
    "unknown datatype": (_json_request(datatype="FLOAT"), {}, 400, "unsupported datatype 'FLOAT'"),
    "wrong datatype": (_json_request(datatype="INT32"), {}, 400, "data must be INT32 values"),
    "strings as FP32": (_json_request(data=["a"] * 784), {}, 400, "data must be FP32 values"),
    "nested data of another size": (_json_request(data=[[0.5], [0.5, 0.5]]), {}, 400, "3 elements"),
    "no data": (_json_request(data=None), {}, 400, "neither data"),
    "unknown input": (_json_request(name="pixels"), {}, 400, "pixels"),
    "not JSON": (b"{", {}, 400, "not valid JSON"),
    "not an object": (b"[]", {}, 400, "JSON object"),
    "no inputs": (b'{"inputs": []}', {}, 400, "non-empty list of inputs"),
    "unknown output": (
        json.dumps({**json.loads(_json_request()), "outputs": [{"name": "logits"}]}).encode(),
        {},
        400,
        "logits",
    ),
    "bad classification": (
        json.dumps(
            {
                **json.loads(_json_request()),
                "outputs": [{"name": "probabilities", "parameters": {"classification": -1}}],
            }
        ).encode(),
        {},
        400,
        "positive integer",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_malformed_requests_are_clear_errors(oip_server, case):
    body, headers, status, fragment = CASES[case]
    answer = _infer(oip_server, body, headers)
    assert answer.status_code == status, answer.text
    assert answer.headers["Content-Type"] == "application/json"
    assert fragment in answer.json()["error"]
    assert requests.get(oip_server.rest + "/v2/health/live", timeout=30).status_code == 200


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("POST", "/v2/models/nope/infer", 404),
        ("POST", f"/v2/models/{MODEL}/versions/7/infer", 404),
        ("POST", f"/v2/models/{MODEL}/versions/abc/infer", 404),
        ("GET", f"/v2/models/{MODEL}/infer", 400),
        ("POST", "/v2/health/live", 400),
        ("GET", "/v2/repository/index", 400),
    ],
)
def test_unknown_targets(oip_server, method, path, status):
    answer = requests.request(method, oip_server.rest + path, data=_json_request(), timeout=30)
    assert answer.status_code == status, answer.text
    assert answer.json()["error"]
