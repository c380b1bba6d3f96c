"""The REST API's `:predict` requests: row (`instances`) and columnar (`inputs`) JSON to arrays
typed by the signature, with tensorflow_serving/util/json_tensor.cc's rules and messages.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import numpy as np

from serving.model_server.errors import InvalidArgument, ModelServerError, Unimplemented
from serving.model_server.rest.json_document import (
    INT32,
    INT64,
    UINT32,
    UINT64,
    decode_base64_object,
    is_base64_object,
    is_element_object,
    is_integer_in,
    is_number,
    json_type,
    to_bytes,
)
from serving.model_server.rest.json_writer import debug_string
from serving.protos.tensorflow.core.framework import types_pb2
from serving.protos.tensorflow.core.protobuf import meta_graph_pb2
from serving.tensors import NUMPY_BY_DTYPE, shape_string, type_name

MAX_RANK = 64

# Numpy dtypes of the tensors JSON values are read into, by signature dtype: no JSON value
# converts to half, uint16 or complex, but an empty list still makes an empty tensor.
_NUMPY_TYPES: dict[Any, type] = {
    **NUMPY_BY_DTYPE,
    types_pb2.DT_STRING: object,
    types_pb2.DT_COMPLEX64: np.complex64,
    types_pb2.DT_COMPLEX128: np.complex128,
}


class RequestFormat(enum.Enum):
    """JsonPredictRequestFormat: the answer mirrors the request's layout."""

    ROW = "instances"
    COLUMNAR = "inputs"


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


def _tensors_from_instances(instances: list[object], dtypes: Mapping[str, int]) -> dict[str, np.ndarray]:
    # FillTensorMapFromInstancesList()
    if not isinstance(instances[0], dict) and len(dtypes) > 1:
        raise InvalidArgument(
            "instances is a plain list, but expecting list of objects as multiple input tensors required as "
            "per tensorinfo_map"
        )
    objects = is_element_object(instances[0])
    input_names = sorted(dtypes)
    values: dict[str, list[object]] = {}
    shapes: dict[str, list[int]] = {}
    for index, element in enumerate(instances):
        if objects:
            if not isinstance(element, dict) or not is_element_object(element):
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
            if is_element_object(element):
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
            f"Expecting shape {shape_string(shapes[name])} but got: {shape_string(shape)}"
        )
    values.setdefault(name, []).extend(flat)


def _tensors_from_inputs(value: object, dtypes: Mapping[str, int]) -> dict[str, np.ndarray]:
    # FillTensorMapFromInputsMap(): a plain value for one input, else an object naming each one.
    if not isinstance(value, dict) or is_base64_object(value):
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
            flat.append(decode_base64_object(value))
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
        ok = is_number(value)
    elif dtype in (types_pb2.DT_INT32, types_pb2.DT_INT16, types_pb2.DT_INT8, types_pb2.DT_UINT8):
        ok = is_integer_in(value, INT32)
    elif dtype == types_pb2.DT_STRING:
        if isinstance(value, str):
            return to_bytes(value)
        ok = False
    elif dtype == types_pb2.DT_INT64:
        ok = is_integer_in(value, INT64)
    elif dtype == types_pb2.DT_BOOL:
        ok = isinstance(value, bool)
    elif dtype == types_pb2.DT_UINT32:
        ok = is_integer_in(value, UINT32)
    elif dtype == types_pb2.DT_UINT64:
        ok = is_integer_in(value, UINT64)
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


def _type_error(value: object, dtype: int) -> InvalidArgument:
    return InvalidArgument(
        f"JSON Value: {debug_string(value)} Type: {json_type(value)} "
        f"is not of expected type: {type_name(dtype)}"
    )


def _size(shape: list[int]) -> int:
    return int(np.prod(shape, dtype=np.int64)) if shape else 1
