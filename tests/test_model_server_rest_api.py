"""The embedded model server's REST API against TF Serving's documentation: "serve a model in
60 seconds", g3doc/api_rest.md's status, metadata, predict (row, columnar, b64) and its errors.
"""

from __future__ import annotations

import base64
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from tests.model_server_rest_helpers import post


@pytest.fixture(scope="module")
def rest(half_plus_two_server) -> str:
    return half_plus_two_server.rest


def test_serve_a_model_in_60_seconds(rest):
    # TF Serving's README: curl -d '{"instances": [1.0, 2.0, 5.0]}' -X POST .../half_plus_two:predict
    response = post(f"{rest}/v1/models/half_plus_two:predict", '{"instances": [1.0, 2.0, 5.0]}')
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"predictions": [2.5, 3.0, 4.5]}
    assert response.text == '{\n    "predictions": [2.5, 3.0, 4.5\n    ]\n}'  # TF Serving's layout


def test_model_status_as_documented(rest):
    response = requests.get(f"{rest}/v1/models/half_plus_two", timeout=30)
    assert response.status_code == 200
    assert response.json() == {
        "model_version_status": [
            {"version": "123", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}
        ]
    }
    assert response.text.startswith('{\n "model_version_status": [\n  {\n   "version": "123",')


def test_status_of_versions_and_labels(rest):
    def versions(path: str) -> list[str]:
        response = requests.get(f"{rest}/v1/models/versioned{path}", timeout=30)
        assert response.status_code == 200, response.text
        return [status["version"] for status in response.json()["model_version_status"]]

    assert versions("") == ["124", "123"]
    assert versions("/versions/123") == ["123"]
    # GetModelStatus reads only a version number: a label asks for every version, as in TF Serving.
    assert versions("/labels/stable") == ["124", "123"]


def test_metadata_is_the_signature_def_map(rest):
    response = requests.get(f"{rest}/v1/models/half_plus_two/metadata", timeout=30)
    assert response.status_code == 200
    assert response.text.startswith('{\n"model_spec":{\n "name": "half_plus_two",')
    metadata = response.json()
    assert metadata["model_spec"] == {"name": "half_plus_two", "signature_name": "", "version": "123"}
    signatures = metadata["metadata"]["signature_def"]["signature_def"]
    assert {"serving_default", "regress_x_to_y", "classify_x_to_y", "greet"} <= set(signatures)
    serving_default = signatures["serving_default"]
    assert serving_default["method_name"] == "tensorflow/serving/predict"
    assert serving_default["inputs"]["x"] == {
        "name": "x:0",
        "dtype": "DT_FLOAT",
        "tensor_shape": {
            "dim": [{"size": "-1", "name": ""}, {"size": "1", "name": ""}],
            "unknown_rank": False,
        },
    }
    labelled = requests.get(f"{rest}/v1/models/versioned/labels/canary/metadata", timeout=30).json()
    assert labelled["model_spec"]["version"] == "124"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/v1/models/versioned:predict", [3.5]),  # latest: 124, y = x/2 + 3
        ("/v1/models/versioned/versions/123:predict", [2.5]),
        ("/v1/models/versioned/labels/stable:predict", [2.5]),
        ("/v1/models/versioned/labels/canary:predict", [3.5]),
        ("/V1/MODELS/versioned/VERSIONS/123:predict", [2.5]),  # TF Serving's paths ignore case
    ],
)
def test_versions_and_labels_pick_what_serves(rest, path, expected):
    response = post(f"{rest}{path}", {"instances": [1.0]})
    assert response.status_code == 200, response.text
    assert response.json() == {"predictions": expected}


def test_columnar_request_gets_a_columnar_answer(rest):
    response = post(f"{rest}/v1/models/half_plus_two:predict", {"inputs": [[1.0], [2.0]]})
    assert response.json() == {"outputs": [[2.5], [3.0]]}
    assert response.text == (
        '{\n    "outputs": [\n        [\n            2.5\n        ],\n'
        '        [\n            3.0\n        ]\n    ]\n}'
    )


def test_strings_in_and_out_with_b64_for_bytes(rest):
    encoded = base64.b64encode(b"Bo\xc3\xa9").decode()
    body = {"signature_name": "greet", "instances": ["Ann", {"b64": encoded}]}
    response = post(f"{rest}/v1/models/half_plus_two:predict", body)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "predictions": [
            {"greeting": "Hello, Ann!", "name_bytes": {"b64": base64.b64encode(b"Ann").decode()}},
            {"greeting": "Hello, Boé!", "name_bytes": {"b64": encoded}},
        ]
    }


def test_several_named_inputs_in_rows_and_columns(rest):
    url = f"{rest}/v1/models/half_plus_two:predict"
    instances = [{"x": [1.0], "name": "A"}, {"x": [3.0], "name": "B"}]
    rows = post(url, {"signature_name": "two_inputs", "instances": instances})
    assert rows.json() == {
        "predictions": [{"greeting": "Hello, A!", "y": [2.5]}, {"greeting": "Hello, B!", "y": [3.5]}]
    }
    inputs = {"x": [[1.0], [3.0]], "name": ["A", "B"]}
    columns = post(url, {"signature_name": "two_inputs", "inputs": inputs})
    assert columns.json() == {"outputs": {"greeting": ["Hello, A!", "Hello, B!"], "y": [[2.5], [3.5]]}}


def test_integer_tensors_and_scalar_outputs(rest):
    url = f"{rest}/v1/models/half_plus_two:predict"
    assert post(url, {"signature_name": "double_counts", "instances": [1, 2, -3]}).json() == {
        "predictions": [2, 4, -6]
    }
    assert post(url, {"signature_name": "scalar", "inputs": [[1.0], [2.0]]}).json() == {"outputs": 5.5}
    assert post(url, {"signature_name": "double_counts", "inputs": [21]}).json() == {"outputs": [42]}


def test_nan_and_infinity_tokens_both_ways(rest):
    response = post(f"{rest}/v1/models/half_plus_two:predict", '{"instances": [NaN, Infinity, -Infinity]}')
    assert response.status_code == 200
    assert response.text == '{\n    "predictions": [NaN, Infinity, -Infinity\n    ]\n}'


SERVABLE = "/v1/models/half_plus_two:predict"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "error"),
    [
        ("POST", "/v1/models/half:predict", '{"instances": [1.0,5.0]}', 404,
         "Servable not found for request: Latest(half)"),  # api_rest.md's own example
        ("POST", "/v1/models/half_plus_two/versions/7:predict", '{"instances": [1.0]}', 404,
         "Servable not found for request: Specific(half_plus_two, 7)"),
        ("POST", "/v1/models/versioned/labels/beta:predict", '{"instances": [1.0]}', 400,
         "Unrecognized servable version label: beta"),
        ("POST", SERVABLE, "", 400, "JSON Parse error: The document is empty"),
        ("POST", SERVABLE, "{", 400, "JSON Parse error: Missing a name for object member. at offset: 1"),
        ("POST", SERVABLE, '{"instances": [1.0 2.0]}', 400,
         "JSON Parse error: Missing a comma or ']' after an array element. at offset: 19"),
        ("POST", SERVABLE, "[1.0]", 400, "JSON Value: [1.0] Is not object"),
        ("POST", SERVABLE, "{}", 400, "Missing 'inputs' or 'instances' key"),
        ("POST", SERVABLE, '{"instances": []}', 400,
         'JSON Value: {\n    "instances": []\n} No values in \'instances\' array'),
        ("POST", SERVABLE, '{"instances": [1.0], "inputs": [1.0]}', 400,
         'JSON Value: {\n    "instances": [1.0],\n    "inputs": [1.0]\n} Not formatted correctly expecting '
         "only one of 'inputs' or 'instances' keys to exist "),
        ("POST", SERVABLE, '{"signature_name": 1, "instances": [1.0]}', 400,
         'JSON Value: {\n    "signature_name": 1,\n    "instances": [1.0]\n} not formatted correctly. '
         "'signature_name' key must be a string value."),
        ("POST", SERVABLE, '{"signature_name": "nope", "instances": [1.0]}', 400,
         'Serving signature name: "nope" not found in signature def'),
        ("POST", SERVABLE, '{"instances": [[1.0], [1.0, 2.0]]}', 400,
         "Failed to process element: 1 of 'instances' list. Error: INVALID_ARGUMENT: Expecting tensor "
         "size: 1 but got: 2"),
        ("POST", SERVABLE, '{"instances": [[1.0, [2.0]]]}', 400,
         "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: Encountered list at "
         "unexpected level: 1 expected < 1"),
        ("POST", SERVABLE, '{"instances": ["a"]}', 400,
         "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: \"a\" Type: "
         "String is not of expected type: float"),
        ("POST", SERVABLE, '{"inputs": {"b64": "AAAA"}}', 400,
         'JSON Value: {\n    "b64": "AAAA"\n} Type: Object is not of expected type: float'),
        ("POST", SERVABLE, '{"signature_name": "double_counts", "instances": [1.5]}', 400,
         "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: JSON Value: 1.5 Type: "
         "Number is not of expected type: int32"),
        ("POST", SERVABLE, '{"signature_name": "greet", "instances": [{"b64": "!!"}]}', 400,
         "Failed to process element: 0 of 'instances' list. Error: INVALID_ARGUMENT: Unable to base64 "
         "decode"),
        ("POST", SERVABLE, '{"signature_name": "two_inputs", "instances": [1.0]}', 400,
         "instances is a plain list, but expecting list of objects as multiple input tensors required as per "
         "tensorinfo_map"),
        ("POST", SERVABLE, '{"signature_name": "two_inputs", "instances": [{"x": [1.0]}]}', 400,
         "Failed to process element: 0 of 'instances' list. JSON object: {\n    \"x\": [1.0]\n} keys must be "
         "equal to: name,x"),
        ("POST", SERVABLE, '{"signature_name": "two_inputs", "inputs": {"x": [[1.0]]}}', 400,
         "Missing named input: name in 'inputs' object."),
        ("POST", SERVABLE, '{"signature_name": "scalar", "instances": [[1.0]]}', 400,
         "Tensor name: total has no shape information "),
        ("POST", SERVABLE, '{"signature_name": "halves", "inputs": [1.0]}', 501,
         "Conversion of JSON Value: 1.0 to type: half"),
        # The same, wrapped per instance: TF Serving makes that INVALID_ARGUMENT.
        ("POST", SERVABLE, '{"signature_name": "halves", "instances": [1.0]}', 400,
         "Failed to process element: 0 of 'instances' list. Error: UNIMPLEMENTED: Conversion of JSON Value: "
         "1.0 to type: half"),
        ("POST", "/v1/models/half_plus_two:PREDICT", '{"instances": [1.0]}', 400,
         "Malformed request: POST /v1/models/half_plus_two:PREDICT"),
        ("PUT", "/v1/models/half_plus_two", "", 400, "Malformed request: PUT /v1/models/half_plus_two"),
        ("GET", "/v1/models", None, 400, "Missing model name in request."),
        ("GET", "/v1/models/half", None, 404, "Could not find any versions of model half"),
        ("GET", "/v1/models/half_plus_two/versions/7", None, 404,
         "Could not find version 7 of model half_plus_two"),
        ("GET", "/v1/models/half_plus_two/versions/99999999999999999999", None, 400,
         "Failed to convert version: 99999999999999999999 to numeric."),
        ("GET", "/v1/models/half_plus_two/versions/7/metadata", None, 404,
         "Servable not found for request: Specific(half_plus_two, 7)"),
        ("GET", "/v1/models/half_plus_two/extra/path", None, 400,
         "Malformed request: GET /v1/models/half_plus_two/extra/path"),
        ("GET", "/healthz", None, 404, "Not found: GET /healthz"),
    ],
)
def test_errors_are_tf_servings(rest, method, path, body, status, error):
    response = requests.request(method, f"{rest}{path}", data=body, timeout=30)
    assert (response.status_code, response.json()) == (status, {"error": error})
    assert response.headers["Content-Type"] == "application/json"


def test_model_name_in_the_path_is_url_decoded(rest):
    response = post(f"{rest}/v1/models/half%5Fplus%5Ftwo:predict", {"instances": [1.0]})
    assert response.json() == {"predictions": [2.5]}


def test_concurrent_requests_each_get_their_own_answer(rest):
    def predict(value: float) -> list[float]:
        return post(f"{rest}/v1/models/half_plus_two:predict", {"instances": [value, value + 1]}).json()

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(predict, [float(i) for i in range(64)]))
    assert answers == [{"predictions": [i / 2 + 2, (i + 1) / 2 + 2]} for i in range(64)]

