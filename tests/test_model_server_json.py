"""TF Serving's REST JSON rules without a server: number formatting, the answers' layout,
quoted JSON in error messages, parse errors, typed tensors and tf.Examples from JSON.
"""

from __future__ import annotations

import numpy as np
import pytest

from serving.model_server.errors import ModelServerError
from serving.model_server.rest import examples_request, json_answers, json_document, predict_request
from serving.model_server.rest.json_writer import debug_string, decimal
from serving.protos.tensorflow.core.framework import types_pb2
from serving.protos.tensorflow.core.protobuf import meta_graph_pb2
from serving.protos.tensorflow_serving.apis import classification_pb2, regression_pb2


@pytest.mark.parametrize(
    ("value", "single", "text"),
    [
        (2.5, True, "2.5"),
        (3.0, True, "3.0"),  # whole numbers keep a ".0"
        (float(np.float32(0.1)), True, "0.1"),  # %g round-trips as a float: no noise digits
        (float(np.float32(0.123456789)), True, "0.123456791"),  # else %.9g
        (1 / 3, False, "0.33333333333333331"),  # %.17g for doubles
        (1e-5, True, "1e-05"),
        (9000000.0, True, "9e+06"),
        (float("nan"), True, "NaN"),
        (float("inf"), True, "Infinity"),
        (float("-inf"), False, "-Infinity"),
    ],
)
def test_decimals_are_written_as_tf_serving_writes_them(value, single, text):
    assert decimal(value, single_precision=single) == text


def test_debug_string_is_rapidjsons_pretty_layout_cut_at_256_bytes():
    assert debug_string({"a": [1, 2.0, "x\"y"], "b": {}}) == '{\n    "a": [1, 2.0, "x\\"y"],\n    "b": {}\n}'
    long = debug_string({"instances": list(range(1000))})
    assert long.startswith('{\n    "instances": [0, 1, 2') and 256 <= len(long) < 262
    assert not long.endswith("]")


def test_answers_layout():
    outputs = {"y": np.array([[2.5], [3.0]], np.float32)}
    assert json_answers.predict_response(outputs, predict_request.RequestFormat.ROW) == (
        '{\n    "predictions": [[2.5], [3.0]\n    ]\n}'
    )
    several = {"a": np.array([1, 2], np.int64), "b_bytes": np.array([b"\x00", b"z"], dtype=object)}
    assert json_answers.predict_response(several, predict_request.RequestFormat.ROW) == (
        '{\n    "predictions": [\n        {\n            "a": 1,\n            "b_bytes": {\n'
        '                "b64": "AA=="\n            }\n        },\n        {\n            "a": 2,\n'
        '            "b_bytes": {\n                "b64": "eg=="\n            }\n        }\n    ]\n}'
    )
    result = classification_pb2.ClassificationResult()
    result.classifications.add().classes.add(label="cat", score=0.25)
    assert json_answers.classification_response(result) == '{\n    "results": [[["cat", 0.25]]\n    ]\n}'
    regression = regression_pb2.RegressionResult()
    regression.regressions.add(value=1.5)
    assert json_answers.regression_response(regression) == '{\n    "results": [1.5]\n}'
    assert json_answers.error_response('bad "thing"\n') == '{\n    "error": "bad \\"thing\\"\\n"\n}'


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        ({"a": np.zeros(2, np.float32), "b": np.zeros(3, np.float32)},
         "Tensor name: b has inconsistent batch size: 3 expecting: 2"),
        ({"h": np.zeros(2, np.float16)}, "Failed to write JSON value for tensor type: half"),
        ({}, "Cannot convert empty tensor map to JSON"),
    ],
)
def test_answers_that_cannot_be_written(outputs, message):
    with pytest.raises(ModelServerError) as raised:
        json_answers.predict_response(outputs, predict_request.RequestFormat.ROW)
    assert raised.value.message == message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "JSON Parse error: The document is empty"),
        (b" \n", "JSON Parse error: The document is empty. at offset: 2"),
        (b'{"a" 1}', "JSON Parse error: Missing a colon after a name of object member. at offset: 5"),
        (b'{"a": {"b": 1 "c": 2}}',
         "JSON Parse error: Missing a comma or '}' after an object member. at offset: 14"),
        (b'{"a": "x', "JSON Parse error: Missing a closing quotation mark in string. at offset: 6"),
        (b'{"a": tru}', "JSON Parse error: Invalid value. at offset: 6"),
        (b'{"a": 1e999}', "JSON Parse error: Number too big to be stored in double. at offset: 6"),
        (b'"text"', 'JSON Value: "text" Is not object'),
    ],
)
def test_parse_errors_use_rapidjsons_words(body, message):
    with pytest.raises(ModelServerError) as raised:
        json_document.parse_request(body)
    assert raised.value.message == message


def test_trailing_bytes_after_the_object_are_ignored_as_tf_serving_does():
    assert json_document.parse_request(b'\xef\xbb\xbf{"instances": [1]} and more') == {"instances": [1]}


def infos(**dtypes: int) -> dict[str, meta_graph_pb2.TensorInfo]:
    return {name: meta_graph_pb2.TensorInfo(dtype=dtype) for name, dtype in dtypes.items()}


def test_values_take_the_signatures_types():
    document = {"instances": [{"f": [[1, 2.5]], "i": 7, "u": 2**64 - 1, "b": True, "s": "é", "u8": 300}]}
    _, tensors = predict_request.predict_inputs(
        document,
        infos(f=types_pb2.DT_FLOAT, i=types_pb2.DT_INT64, u=types_pb2.DT_UINT64, b=types_pb2.DT_BOOL,
              s=types_pb2.DT_STRING, u8=types_pb2.DT_UINT8),
        "",
    )
    assert tensors["f"].dtype == np.float32 and tensors["f"].shape == (1, 1, 2)
    assert tensors["i"].tolist() == [7] and tensors["u"].tolist() == [2**64 - 1]
    assert tensors["b"].tolist() == [True] and tensors["s"].tolist() == ["é".encode()]
    assert tensors["u8"].tolist() == [44]  # TF narrows int_val with a C cast


def test_columnar_scalars_and_b64():
    document = {"inputs": {"b64": "aGk="}}
    request_format, tensors = predict_request.predict_inputs(document, infos(s=types_pb2.DT_STRING), "")
    assert request_format is predict_request.RequestFormat.COLUMNAR
    assert tensors["s"].shape == () and tensors["s"][()] == b"hi"


def test_examples_with_context_and_every_feature_kind():
    example = {"f": 1.5, "i": [1, True], "s": {"b64": "AAE="}, "none": []}
    model_input = examples_request.examples_input({"context": {"shared": "c"}, "examples": [example]})
    with_context = model_input.example_list_with_context
    assert list(with_context.context.features.feature["shared"].bytes_list.value) == [b"c"]
    feature = with_context.examples[0].features.feature
    assert list(feature["f"].float_list.value) == [1.5]
    assert list(feature["i"].int64_list.value) == [1, 1]
    assert list(feature["s"].bytes_list.value) == [b"\x00\x01"]
    assert feature["none"].WhichOneof("kind") is None


def test_deep_nesting_is_a_clear_invalid_argument():
    too_deep = b'{"instances": ' + b"[" * 5000 + b"1" + b"]" * 5000 + b"}"
    with pytest.raises(ModelServerError, match="The document is nested too deeply"):
        json_document.parse_request(too_deep)
    document = json_document.parse_request(b'{"inputs": ' + b"[" * 65 + b"1" + b"]" * 65 + b"}")
    with pytest.raises(ModelServerError, match="has 65 dimensions; at most 64 are supported"):
        predict_request.predict_inputs(document, infos(x=types_pb2.DT_FLOAT), "")
