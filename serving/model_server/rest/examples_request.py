"""The REST API's `:classify` and `:regress` requests: `examples` (+ `context`) JSON to the
tf.Examples of an Input, with tensorflow_serving/util/json_tensor.cc's rules and messages.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from serving.model_server.errors import InvalidArgument
from serving.model_server.rest.json_document import (
    INT64,
    decode_base64_object,
    is_base64_object,
    is_integer_in,
    json_type,
    to_bytes,
)
from serving.model_server.rest.json_writer import debug_string
from serving.protos.tensorflow.core.example import example_pb2, feature_pb2
from serving.protos.tensorflow_serving.apis import input_pb2


def examples_input(document: Mapping[str, object]) -> input_pb2.Input:
    """FillClassifyRegressRequestFromJson() after the signature: `context` and `examples` as Input."""
    model_input = input_pb2.Input()
    has_context = "context" in document
    if has_context:
        _fill_example(document["context"], model_input.example_list_with_context.context)
    if "examples" not in document:
        raise InvalidArgument(
            f"JSON Value: {debug_string(document)} When method is classify, key 'examples' is expected "
            "and was not found"
        )
    examples = document["examples"]
    if not isinstance(examples, list):
        raise InvalidArgument(
            f"JSON Value: {debug_string(document)} Expecting 'examples' value to be an list/array"
        )
    if not examples:
        raise InvalidArgument(f"JSON Value: {debug_string(document)} 'examples' value is an empty array")
    if has_context:
        target = model_input.example_list_with_context.examples
    else:
        target = model_input.example_list.examples
    for value in examples:
        _fill_example(value, target.add())
    return model_input


def _fill_example(value: object, example: example_pb2.Example) -> None:
    """MakeExampleFromJsonObject(): each key a feature; numbers, strings, booleans, b64 objects."""
    if not isinstance(value, dict):
        raise InvalidArgument(f"Example must be JSON object but got JSON {json_type(value)}")
    for name, content in value.items():
        feature = feature_pb2.Feature()
        for item in content if isinstance(content, list) else [content]:
            _add_feature_value(item, name, feature)
        example.features.feature[name].CopyFrom(feature)


def _add_feature_value(value: object, name: str, feature: feature_pb2.Feature) -> None:
    # AddValueToFeature(): the first value fixes the feature's kind.
    if value is None or isinstance(value, list) or (isinstance(value, dict) and not is_base64_object(value)):
        raise InvalidArgument(f"Feature: {name} has element with unexpected JSON type: {json_type(value)}")
    if isinstance(value, bool):
        _check_kind(feature, "int64_list", name).value.append(1 if value else 0)
    elif isinstance(value, dict):
        _check_kind(feature, "bytes_list", name).value.append(decode_base64_object(value))
    elif isinstance(value, str):
        _check_kind(feature, "bytes_list", name).value.append(to_bytes(value))
    elif isinstance(value, float):
        _check_kind(feature, "float_list", name).value.append(value)
    else:
        int64_list = _check_kind(feature, "int64_list", name)
        if not is_integer_in(value, INT64):
            raise InvalidArgument(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
        int64_list.value.append(value)


def _check_kind(feature: feature_pb2.Feature, kind: str, name: str) -> Any:
    current = feature.WhichOneof("kind")
    if current not in (None, kind):
        raise InvalidArgument(
            f"Unexpected element type in feature: {name} expecting type: {current.removesuffix('_list')}"
        )
    return getattr(feature, kind)
