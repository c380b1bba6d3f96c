"""TF Serving's REST JSON encoding: request bodies to tensors and tf.Examples, results to JSON.

Rules and messages of tensorflow_serving/util/json_tensor.cc: row (`instances`) and
columnar (`inputs`) predict requests typed by the signature, `{"b64": ...}` for binary
strings, `_bytes` output names written as base64, classify/regress `examples` (+ `context`)
to tf.Example, and the answers' JSON layout (json_writer.py). Failures raise
`errors.ModelServerError` with the code and message TF Serving answers.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import re
from collections.abc import Mapping

import numpy as np

from serving.model_server.errors import InvalidArgument, ModelServerError, Unimplemented
from serving.model_server.json_writer import PrettyWriter, debug_string, decimal
from serving.protos.tensorflow.core.example import example_pb2, feature_pb2
from serving.protos.tensorflow.core.framework import types_pb2
from serving.protos.tensorflow.core.protobuf import meta_graph_pb2
from serving.protos.tensorflow_serving.apis import classification_pb2, input_pb2, regression_pb2

BASE64_KEY = "b64"
BYTES_SUFFIX = "_bytes"  # DT_STRING outputs named *_bytes are written as {"b64": ...}
MAX_RANK = 64
_INT32 = (-(2**31), 2**31 - 1)
_UINT32 = (0, 2**32 - 1)
_INT64 = (-(2**63), 2**63 - 1)
_UINT64 = (0, 2**64 - 1)

# rapidjson's GetParseError_En() wording for the errors Python's json module reports.
_PARSE_ERRORS = (
    ("Expecting property name enclosed in double quotes", "Missing a name for object member."),
    ("Expecting ':' delimiter", "Missing a colon after a name of object member."),
    ("Unterminated string", "Missing a closing quotation mark in string."),
    ("Invalid control character", "Invalid encoding in string."),
    ("Invalid \\uXXXX escape", "Incorrect hex digit after \\u escape in string."),
    ("Invalid \\escape", "Invalid escape character in string."),
    ("Expecting value", "Invalid value."),
)

# Numpy dtypes of the tensors JSON values are read into, by signature dtype.
_NUMPY_TYPES = {
    types_pb2.DT_FLOAT: np.float32,
    types_pb2.DT_DOUBLE: np.float64,
    types_pb2.DT_INT32: np.int32,
    types_pb2.DT_INT16: np.int16,
    types_pb2.DT_INT8: np.int8,
    types_pb2.DT_UINT8: np.uint8,
    types_pb2.DT_INT64: np.int64,
    types_pb2.DT_BOOL: np.bool_,
    types_pb2.DT_UINT32: np.uint32,
    types_pb2.DT_UINT64: np.uint64,
    types_pb2.DT_STRING: object,
    # No JSON value converts to these, but an empty list still makes an empty tensor.
    types_pb2.DT_HALF: np.float16,
    types_pb2.DT_UINT16: np.uint16,
    types_pb2.DT_COMPLEX64: np.complex64,
    types_pb2.DT_COMPLEX128: np.complex128,
}


class RequestFormat(enum.Enum):
    """JsonPredictRequestFormat: the answer mirrors the request's layout."""

    ROW = "instances"
    COLUMNAR = "inputs"


class _NumberTooBig(ValueError):
    pass


# Parsing -------------------------------------------------------------------------------


def parse_request(body: bytes) -> dict[str, object]:
    """ParseJson(): the body as a JSON object (NaN/Infinity allowed, trailing bytes ignored)."""
    if not body:
        raise InvalidArgument("JSON Parse error: The document is empty")
    text = body.decode("utf-8", "surrogateescape").removeprefix("\ufeff")
    start = len(text) - len(text.lstrip(" \t\r\n"))
    try:
        if start == len(text):
            raise json.JSONDecodeError("The document is empty.", text, start)
        document, _ = _DECODER.raw_decode(text, start)
    except RecursionError:  # rapidjson parses iteratively; Python's parser has a depth limit
        raise InvalidArgument("JSON Parse error: The document is nested too deeply") from None
    except json.JSONDecodeError as error:
        offset = len(text[: error.pos].encode("utf-8", "surrogateescape"))
        raise InvalidArgument(f"JSON Parse error: {_parse_message(error)} at offset: {offset}") from None
    except _NumberTooBig as error:
        offset = len(text[: max(text.find(str(error)), 0)].encode("utf-8", "surrogateescape"))
        message = f"Number too big to be stored in double. at offset: {offset}"
        raise InvalidArgument(f"JSON Parse error: {message}") from None
    if not isinstance(document, dict):
        raise InvalidArgument(f"JSON Value: {debug_string(document)} Is not object")
    return document


def signature_name(document: Mapping[str, object]) -> str:
    """FillSignature(): the optional `signature_name`, which must be a string."""
    value = document.get("signature_name", "")
    if not isinstance(value, str):
        raise InvalidArgument(
            f"JSON Value: {debug_string(document)} not formatted correctly. "
            "'signature_name' key must be a string value."
        )
    return value


def predict_inputs(
    document: Mapping[str, object], tensor_infos: Mapping[str, meta_graph_pb2.TensorInfo], signature: str
) -> tuple[RequestFormat, dict[str, np.ndarray]]:
    """FillPredictRequestFromJson() after the signature: `instances` or `inputs` as typed arrays."""
    if not tensor_infos:
        raise InvalidArgument(f"Failed to get input map for signature: {signature or 'DEFAULT'}")
    dtypes = {name: info.dtype for name, info in tensor_infos.items()}
    if "instances" in document:
        if "inputs" in document:
            raise InvalidArgument(
                f"JSON Value: {debug_string(document)} Not formatted correctly expecting only one of "
                "'inputs' or 'instances' keys to exist "
            )
        instances = document["instances"]
        if not isinstance(instances, list):
            raise InvalidArgument(
                f"JSON Value: {debug_string(document)} Expecting 'instances' to be an list/array"
            )
        if not instances:
            raise InvalidArgument(f"JSON Value: {debug_string(document)} No values in 'instances' array")
        return RequestFormat.ROW, _tensors_from_instances(instances, dtypes)
    if "inputs" in document:
        return RequestFormat.COLUMNAR, _tensors_from_inputs(document["inputs"], dtypes)
    raise InvalidArgument("Missing 'inputs' or 'instances' key")


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


def _tensors_from_instances(instances: list[object], dtypes: Mapping[str, int]) -> dict[str, np.ndarray]:
    # FillTensorMapFromInstancesList()
    if not isinstance(instances[0], dict) and len(dtypes) > 1:
        raise InvalidArgument(
            "instances is a plain list, but expecting list of objects as multiple input tensors required as "
            "per tensorinfo_map"
        )
    objects = _is_element_object(instances[0])
    input_names = sorted(dtypes)
    values: dict[str, list[object]] = {}
    shapes: dict[str, list[int]] = {}
    for index, element in enumerate(instances):
        if objects:
            if not isinstance(element, dict) or not _is_element_object(element):
                raise InvalidArgument(f"Expecting object but got list at item {index} of input list")
            for name, item in element.items():
                try:
                    _add_instance_item(item, name, dtypes, values, shapes)
                except ModelServerError as error:
                    raise InvalidArgument(
                        f"Failed to process element: {index} key: {name} of 'instances' list. Error: {error}"
                    ) from None
            if sorted(element) != input_names:
                raise InvalidArgument(
                    f"Failed to process element: {index} of 'instances' list. JSON object: "
                    f"{debug_string(element)} keys must be equal to: {','.join(input_names)}"
                )
        else:
            if _is_element_object(element):
                raise InvalidArgument(f"Expecting value/list but got object at item {index} of input list")
            try:
                _add_instance_item(element, input_names[0], dtypes, values, shapes)
            except ModelServerError as error:
                raise InvalidArgument(
                    f"Failed to process element: {index} of 'instances' list. Error: {error}"
                ) from None
    return {
        name: _array(values[name], [len(instances), *shapes[name]], dtypes[name]) for name in values
    }


def _add_instance_item(
    item: object,
    name: str,
    dtypes: Mapping[str, int],
    values: dict[str, list[object]],
    shapes: dict[str, list[int]],
) -> None:
    # AddInstanceItem(): every instance of a named input has the first one's shape.
    if name not in dtypes:
        raise InvalidArgument(f"JSON object: does not have named input: {name}")
    shape = _dense_shape(item)
    _check_rank(item, len(shape) + 1)
    flat: list[object] = []
    _fill_values(item, 0, shape, dtypes[name], flat)
    if name not in shapes:
        shapes[name] = shape
    elif _size(shapes[name]) != len(flat):
        raise InvalidArgument(f"Expecting tensor size: {_size(shapes[name])} but got: {len(flat)}")
    elif shapes[name] != shape:
        raise InvalidArgument(
            f"Expecting shape {_shape_string(shapes[name])} but got: {_shape_string(shape)}"
        )
    values.setdefault(name, []).extend(flat)


def _tensors_from_inputs(value: object, dtypes: Mapping[str, int]) -> dict[str, np.ndarray]:
    # FillTensorMapFromInputsMap(): a plain value for one input, else an object naming each one.
    if not isinstance(value, dict) or _is_base64_object(value):
        if len(dtypes) > 1:
            raise InvalidArgument(
                "inputs is a plain value/list, but expecting an object as multiple input tensors required "
                "as per tensorinfo_map"
            )
        (name,) = dtypes
        return {name: _tensor(value, dtypes[name])}
    tensors = {}
    for name in sorted(dtypes):
        if name not in value:
            raise InvalidArgument(f"Missing named input: {name} in 'inputs' object.")
        tensors[name] = _tensor(value[name], dtypes[name])
    return tensors


def _tensor(value: object, dtype: int) -> np.ndarray:
    shape = _dense_shape(value)
    _check_rank(value, len(shape))
    flat: list[object] = []
    _fill_values(value, 0, shape, dtype, flat)
    return _array(flat, shape, dtype)


def _check_rank(value: object, rank: int) -> None:
    # NumPy holds at most 64 dimensions (TensorFlow 254): refuse more rather than fail later.
    if rank > MAX_RANK:
        raise InvalidArgument(
            f"JSON Value: {debug_string(value)} has {rank} dimensions; at most {MAX_RANK} are supported"
        )


def _dense_shape(value: object) -> list[int]:
    """GetDenseTensorShape(): the sizes of the first list at each nesting level."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _fill_values(value: object, level: int, shape: list[int], dtype: int, flat: list[object]) -> None:
    """FillTensorProto(): every leaf at depth len(shape), every list as long as the first."""
    rank = len(shape)
    if not isinstance(value, list):
        if level != rank:
            raise InvalidArgument(
                f"JSON Value: {debug_string(value)} found at incorrect level: {level + 1} in the JSON DOM. "
                f"Expected at level: {rank}"
            )
        if isinstance(value, dict):
            if dtype != types_pb2.DT_STRING:
                raise _type_error(value, dtype)
            flat.append(_decode_base64_object(value))
        else:
            flat.append(_tensor_value(value, dtype))
        return
    if level >= rank:
        raise InvalidArgument(f"Encountered list at unexpected level: {level} expected < {rank}")
    if len(value) != shape[level]:
        raise InvalidArgument(
            f"Encountered list at unexpected size: {len(value)} at level: {level} "
            f"expected size: {shape[level]}"
        )
    for item in value:
        _fill_values(item, level + 1, shape, dtype, flat)


def _tensor_value(value: object, dtype: int) -> object:
    """AddValueToTensor(): a JSON leaf checked against the signature's dtype."""
    if dtype in (types_pb2.DT_FLOAT, types_pb2.DT_DOUBLE):
        ok = _is_number(value)
    elif dtype in (types_pb2.DT_INT32, types_pb2.DT_INT16, types_pb2.DT_INT8, types_pb2.DT_UINT8):
        ok = _is_integer_in(value, _INT32)
    elif dtype == types_pb2.DT_STRING:
        if isinstance(value, str):
            return _to_bytes(value)
        ok = False
    elif dtype == types_pb2.DT_INT64:
        ok = _is_integer_in(value, _INT64)
    elif dtype == types_pb2.DT_BOOL:
        ok = isinstance(value, bool)
    elif dtype == types_pb2.DT_UINT32:
        ok = _is_integer_in(value, _UINT32)
    elif dtype == types_pb2.DT_UINT64:
        ok = _is_integer_in(value, _UINT64)
    else:
        raise Unimplemented(f"Conversion of JSON Value: {debug_string(value)} to type: {type_name(dtype)}")
    if not ok:
        raise _type_error(value, dtype)
    return value


def _array(flat: list[object], shape: list[int], dtype: int) -> np.ndarray:
    numpy_type = _NUMPY_TYPES.get(dtype)
    if numpy_type is None:  # bfloat16, resource, variant...: only empty lists get here
        raise Unimplemented(f"Conversion of JSON Value: [] to type: {type_name(dtype)}")
    if numpy_type is object:
        array = np.empty(len(flat), dtype=object)
        array[:] = flat
        return array.reshape(shape)
    if dtype in (types_pb2.DT_INT16, types_pb2.DT_INT8, types_pb2.DT_UINT8):
        # Tensor::FromProto narrows int_val with a C cast: wrap around, as TF does.
        return np.array(flat, dtype=np.int64).astype(numpy_type).reshape(shape)
    return np.array(flat, dtype=numpy_type).reshape(shape)


def _fill_example(value: object, example: example_pb2.Example) -> None:
    """MakeExampleFromJsonObject(): each key a feature; numbers, strings, booleans, b64 objects."""
    if not isinstance(value, dict):
        raise InvalidArgument(f"Example must be JSON object but got JSON {_json_type(value)}")
    for name, content in value.items():
        feature = feature_pb2.Feature()
        for item in content if isinstance(content, list) else [content]:
            _add_feature_value(item, name, feature)
        example.features.feature[name].CopyFrom(feature)


def _add_feature_value(value: object, name: str, feature: feature_pb2.Feature) -> None:
    # AddValueToFeature(): the first value fixes the feature's kind.
    if value is None or isinstance(value, list) or (isinstance(value, dict) and not _is_base64_object(value)):
        raise InvalidArgument(f"Feature: {name} has element with unexpected JSON type: {_json_type(value)}")
    if isinstance(value, bool):
        _check_kind(feature, "int64_list", name).value.append(1 if value else 0)
    elif isinstance(value, dict):
        _check_kind(feature, "bytes_list", name).value.append(_decode_base64_object(value))
    elif isinstance(value, str):
        _check_kind(feature, "bytes_list", name).value.append(_to_bytes(value))
    elif isinstance(value, float):
        _check_kind(feature, "float_list", name).value.append(value)
    else:
        int64_list = _check_kind(feature, "int64_list", name)
        if not _is_integer_in(value, _INT64):
            raise InvalidArgument(f"Feature: {name} has uint64_t element. Only int64_t is supported.")
        int64_list.value.append(value)  # type: ignore[arg-type]


def _check_kind(feature: feature_pb2.Feature, kind: str, name: str) -> object:
    current = feature.WhichOneof("kind")
    if current not in (None, kind):
        raise InvalidArgument(
            f"Unexpected element type in feature: {name} expecting type: {current.removesuffix('_list')}"
        )
    return getattr(feature, kind)


# Answers -------------------------------------------------------------------------------


def predict_response(outputs: Mapping[str, np.ndarray], request_format: RequestFormat) -> str:
    """MakeJsonFromTensors(): `predictions` rows or `outputs` columns, named when several."""
    if not outputs:
        raise InvalidArgument("Cannot convert empty tensor map to JSON")
    names = sorted(outputs)
    writer = PrettyWriter()
    writer.start_object()
    several = len(names) > 1
    if request_format is RequestFormat.ROW:
        batch_size = _common_batch_size(outputs, names)
        writer.key("predictions")
        writer.start_array()
        for row in range(batch_size):
            if several:
                writer.start_object()
            writer.single_line_arrays = True
            for name in names:
                if several:
                    writer.key(name)
                _write_tensor(writer, outputs[name][row, ...], _is_bytes_output(name, outputs[name]))
            writer.single_line_arrays = False
            if several:
                writer.end_object()
        writer.end_array()
    else:
        writer.key("outputs")
        if several:
            writer.start_object()
        for name in names:
            if several:
                writer.key(name)
            _write_tensor(writer, outputs[name], _is_bytes_output(name, outputs[name]))
        if several:
            writer.end_object()
    writer.end_object()
    return writer.text()


def classification_response(result: classification_pb2.ClassificationResult) -> str:
    """MakeJsonFromClassificationResult(): `results`, per example a list of [label, score]."""
    if not result.classifications:
        raise InvalidArgument("Cannot convert empty ClassificationResults to JSON")
    writer = PrettyWriter()
    writer.start_object()
    writer.key("results")
    writer.start_array()
    for classifications in result.classifications:
        writer.single_line_arrays = True
        writer.start_array()
        for entry in classifications.classes:
            writer.start_array()
            writer.string(entry.label)
            writer.raw_number(decimal(entry.score, single_precision=True))
            writer.end_array()
        writer.end_array()
        writer.single_line_arrays = False
    writer.end_array()
    writer.end_object()
    return writer.text()


def regression_response(result: regression_pb2.RegressionResult) -> str:
    """MakeJsonFromRegressionResult(): `results`, one value per example."""
    if not result.regressions:
        raise InvalidArgument("Cannot convert empty RegressionResults to JSON")
    writer = PrettyWriter()
    writer.start_object()
    writer.key("results")
    writer.single_line_arrays = True
    writer.start_array()
    for regression in result.regressions:
        writer.raw_number(decimal(regression.value, single_precision=True))
    writer.end_array()
    writer.end_object()
    return writer.text()


def error_response(message: str) -> str:
    """MakeJsonFromStatus(): `{"error": message}`."""
    writer = PrettyWriter()
    writer.start_object()
    writer.key("error")
    writer.string(message)
    writer.end_object()
    return writer.text()


def _common_batch_size(outputs: Mapping[str, np.ndarray], names: list[str]) -> int:
    batch_size = -1
    for name in names:
        if outputs[name].ndim == 0:
            raise InvalidArgument(f"Tensor name: {name} has no shape information ")
        size = outputs[name].shape[0]
        if batch_size >= 0 and batch_size != size:
            raise InvalidArgument(
                f"Tensor name: {name} has inconsistent batch size: {size} expecting: {batch_size}"
            )
        batch_size = size
    return batch_size


def _write_tensor(writer: PrettyWriter, array: np.ndarray, as_base64: bool) -> None:
    """AddTensorValues(): nested lists down to the values; a scalar alone."""
    if array.ndim == 0:
        _write_value(writer, array[()], array.dtype, as_base64)
        return
    writer.start_array()
    for item in array:
        if array.ndim > 1:
            _write_tensor(writer, item, as_base64)
        else:
            _write_value(writer, item, array.dtype, as_base64)
    writer.end_array()


def _write_value(writer: PrettyWriter, value: object, dtype: np.dtype, as_base64: bool) -> None:
    # AddSingleValueAndAdvance(): the dtypes json_tensor.cc writes; others are an error.
    if dtype == np.float32:
        writer.raw_number(decimal(float(value), single_precision=True))  # type: ignore[arg-type]
    elif dtype == np.float64:
        writer.raw_number(decimal(float(value), single_precision=False))  # type: ignore[arg-type]
    elif dtype in (np.int8, np.int16, np.int32, np.uint8, np.int64, np.uint32, np.uint64):
        writer.raw_number(str(int(value)))  # type: ignore[call-overload]
    elif dtype == np.bool_:
        writer.boolean(bool(value))
    elif dtype.kind in ("O", "S", "U"):
        data = value if isinstance(value, bytes) else str(value).encode()
        if as_base64:
            writer.start_object()
            writer.key(BASE64_KEY)
            writer.string(base64.b64encode(data).decode("ascii"))
            writer.end_object()
        else:
            writer.string(data.decode("utf-8", "surrogateescape"))
    else:
        raise InvalidArgument(f"Failed to write JSON value for tensor type: {_numpy_type_name(dtype)}")


def _is_bytes_output(name: str, array: np.ndarray) -> bool:
    return name.endswith(BYTES_SUFFIX) and (array.dtype == object or array.dtype.kind == "S")


# Helpers -------------------------------------------------------------------------------


def _parse_int(text: str) -> int | float:
    # rapidjson keeps integers that fit 64 bits; bigger ones become doubles.
    if len(text) <= 20:
        value = int(text)
        if _INT64[0] <= value <= _UINT64[1]:
            return value
    return _parse_float(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _NumberTooBig(text)
    return value


_DECODER = json.JSONDecoder(parse_int=_parse_int, parse_float=_parse_float)


def _parse_message(error: json.JSONDecodeError) -> str:
    if error.msg == "The document is empty.":
        return error.msg
    if error.msg.startswith("Expecting ',' delimiter"):
        if _innermost_container(error.doc, error.pos) == "[":
            return "Missing a comma or ']' after an array element."
        return "Missing a comma or '}' after an object member."
    for python_message, rapidjson_message in _PARSE_ERRORS:
        if error.msg.startswith(python_message):
            return rapidjson_message
    return error.msg


_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]')


def _innermost_container(text: str, position: int) -> str:
    """'[' or '{': the bracket still open at `position` (strings skipped)."""
    stack: list[str] = []
    for match in _TOKENS.finditer(text, 0, position):
        token = match.group()
        if token in "[{":
            stack.append(token)
        elif token in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else "{"


def _is_base64_object(value: object) -> bool:
    """IsValBase64Object(): exactly one key, "b64", holding a string."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(BASE64_KEY), str)


def _is_element_object(value: object) -> bool:
    return isinstance(value, dict) and not _is_base64_object(value)


def _decode_base64_object(value: dict[str, object]) -> bytes:
    if not _is_base64_object(value):
        raise InvalidArgument(f"JSON Value: {debug_string(value)} not formatted correctly for base64 data")
    text = str(value[BASE64_KEY])
    # absl::Base64Unescape: standard alphabet, padding optional.
    if len(text) % 4 == 1:
        raise InvalidArgument("Unable to base64 decode")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument("Unable to base64 decode") from None


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _is_integer_in(value: object, bounds: tuple[int, int]) -> bool:
    # rapidjson's IsInt()/IsInt64()/IsUint()...: an integer literal within the type's range.
    return isinstance(value, int) and not isinstance(value, bool) and bounds[0] <= value <= bounds[1]


def _json_type(value: object) -> str:
    """JsonTypeString()."""
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def _type_error(value: object, dtype: int) -> InvalidArgument:
    return InvalidArgument(
        f"JSON Value: {debug_string(value)} Type: {_json_type(value)} "
        f"is not of expected type: {type_name(dtype)}"
    )


def type_name(dtype: int) -> str:
    """DataTypeString(): DT_FLOAT -> float, DT_HALF -> half."""
    if dtype not in types_pb2.DataType.values():
        return f"unknown dtype enum ({dtype})"
    return types_pb2.DataType.Name(dtype).removeprefix("DT_").lower()


def _numpy_type_name(dtype: np.dtype) -> str:
    # The output types json_tensor.cc cannot write, by TensorFlow's name.
    return "half" if dtype.name == "float16" else dtype.name


def _to_bytes(text: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate from a \\uD8xx escape
        return text.encode("utf-8", "surrogatepass")


def _size(shape: list[int]) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape else 1


def _shape_string(shape: list[int]) -> str:
    """ShapeToString(): [2,3]."""
    return "[" + ",".join(map(str, shape)) + "]"


__all__ = [
    "RequestFormat",
    "classification_response",
    "error_response",
    "examples_input",
    "parse_request",
    "predict_inputs",
    "predict_response",
    "regression_response",
    "signature_name",
]
