"""The REST API's answers as JSON: outputs as `predictions` rows or `outputs` columns, classify and
regress `results`, and `{"error": ...}`, laid out as tensorflow_serving/util/json_tensor.cc writes them.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping

import numpy as np

from serving.model_server.errors import InvalidArgument
from serving.model_server.rest.json_document import BASE64_KEY
from serving.model_server.rest.json_writer import PrettyWriter, decimal
from serving.model_server.rest.predict_request import RequestFormat
from serving.protos.tensorflow_serving.apis import classification_pb2, regression_pb2

BYTES_SUFFIX = "_bytes"  # DT_STRING outputs named *_bytes are written as {"b64": ...}


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


def _numpy_type_name(dtype: np.dtype) -> str:
    # The output types json_tensor.cc cannot write, by TensorFlow's name.
    return "half" if dtype.name == "float16" else dtype.name
