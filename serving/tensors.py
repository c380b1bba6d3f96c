"""NumPy arrays to and from TensorFlow's TensorProto, and TensorFlow's dtype and shape rules,
without importing TensorFlow.

Numeric tensors travel in `tensor_content` (raw little-endian bytes), as TF Serving
itself answers; strings in `string_val`. Both ends of the gRPC hop use this module, and
the model server takes its type tables, type names and shape checks from here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from serving.protos.tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

# TensorShape::MaxDimensions(): Tensor::FromProto refuses a shape with more dimensions.
MAX_DIMS = 254
_INT64_MAX = 2**63 - 1

NUMPY_BY_DTYPE: dict[Any, type] = {
    types_pb2.DT_FLOAT: np.float32,
    types_pb2.DT_DOUBLE: np.float64,
    types_pb2.DT_HALF: np.float16,
    types_pb2.DT_INT8: np.int8,
    types_pb2.DT_INT16: np.int16,
    types_pb2.DT_INT32: np.int32,
    types_pb2.DT_INT64: np.int64,
    types_pb2.DT_UINT8: np.uint8,
    types_pb2.DT_UINT16: np.uint16,
    types_pb2.DT_UINT32: np.uint32,
    types_pb2.DT_UINT64: np.uint64,
    types_pb2.DT_BOOL: np.bool_,
}
_DTYPE_BY_NUMPY = {np.dtype(v): k for k, v in NUMPY_BY_DTYPE.items()}
# tensor_content's byte order, per type.
_WIRE_DTYPE = {k: np.dtype(v).newbyteorder("<") for k, v in NUMPY_BY_DTYPE.items()}
# The numeric types `make_ndarray` reads (strings aside).
NUMERIC_DTYPES = frozenset(NUMPY_BY_DTYPE)

# Which repeated field holds the values when tensor_content is empty (Tensor::AsProtoField).
VALUE_FIELD = {
    types_pb2.DT_FLOAT: "float_val",
    types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_HALF: "half_val",
    types_pb2.DT_INT8: "int_val",
    types_pb2.DT_INT16: "int_val",
    types_pb2.DT_INT32: "int_val",
    types_pb2.DT_UINT8: "int_val",
    types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_INT64: "int64_val",
    types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val",
    types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_STRING: "string_val",
}


def make_tensor_proto(array: np.ndarray) -> tensor_pb2.TensorProto:
    """Encode a NumPy array (numeric, bool, or bytes/str) as a TensorProto."""
    array = np.asarray(array)
    shape = tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=int(size)) for size in array.shape]
    )
    if array.dtype.kind in ("S", "U", "O"):
        values = [v if isinstance(v, bytes) else str(v).encode() for v in array.reshape(-1).tolist()]
        return tensor_pb2.TensorProto(dtype=types_pb2.DT_STRING, tensor_shape=shape, string_val=values)
    dtype = _DTYPE_BY_NUMPY.get(array.dtype)
    if dtype is None:
        raise ValueError(f"unsupported array dtype {array.dtype}")
    return tensor_pb2.TensorProto(
        dtype=dtype,
        tensor_shape=shape,
        tensor_content=np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes(),
    )


def make_ndarray(tensor: tensor_pb2.TensorProto) -> np.ndarray:
    """Decode a TensorProto into a NumPy array (strings become an object array of bytes)."""
    shape = tuple(dim.size for dim in tensor.tensor_shape.dim)
    count = math.prod(shape)
    if tensor.dtype == types_pb2.DT_STRING:
        values = list(tensor.string_val)
        if len(values) == 1 and count != 1:
            values = values * count
        return np.array(values, dtype=object).reshape(shape)
    numpy_dtype = NUMPY_BY_DTYPE.get(tensor.dtype)
    if numpy_dtype is None:
        raise ValueError(f"unsupported tensor dtype {types_pb2.DataType.Name(tensor.dtype)}")
    if tensor.tensor_content:
        return (
            np.frombuffer(tensor.tensor_content, dtype=_WIRE_DTYPE[tensor.dtype])
            .astype(numpy_dtype, copy=False)
            .reshape(shape)
        )
    values = getattr(tensor, VALUE_FIELD[tensor.dtype])
    if tensor.dtype == types_pb2.DT_HALF:
        flat = np.array(values, dtype=np.uint16).view(np.float16)
    else:
        flat = np.array(values, dtype=numpy_dtype)
    if flat.size == count:
        return flat.reshape(shape)
    if flat.size == 1:  # TF allows one value to fill the whole tensor
        return np.full(shape, flat[0], dtype=numpy_dtype)
    if flat.size == 0:
        return np.zeros(shape, dtype=numpy_dtype)
    raise ValueError(f"tensor has {flat.size} values for shape {list(shape)}")


def type_name(data_type: int) -> str:
    """TensorFlow's DataTypeString(): DT_FLOAT -> float, DT_HALF -> half."""
    if data_type not in types_pb2.DataType.values():
        return f"unknown dtype enum ({data_type})"
    return types_pb2.DataType.Name(data_type).removeprefix("DT_").lower()


def shape_string(shape: Sequence[int]) -> str:
    """TensorShape::DebugString(): [2,3]."""
    return "[" + ",".join(map(str, shape)) + "]"


def check_shape(shape: tensor_shape_pb2.TensorShapeProto) -> None:
    """TensorShape::IsValid(proto) for a full (not partial) shape; ValueError if not."""
    if len(shape.dim) > MAX_DIMS:
        raise ValueError(f"a tensor shape has at most {MAX_DIMS} dimensions")
    elements = 1
    for dim in shape.dim:
        if dim.size < 0:
            raise ValueError(f"negative dimension size {dim.size}")
        elements *= dim.size
        if elements > _INT64_MAX:
            raise ValueError("the shape has more elements than an int64 counts")


def shape_fits(expected: tensor_shape_pb2.TensorShapeProto, shape: Sequence[int]) -> bool:
    """tf.TensorShape(expected).is_compatible_with(shape), without building TensorShapes per call."""
    if expected.unknown_rank:
        return True
    dims = expected.dim
    if len(dims) != len(shape):
        return False
    return all(dim.size in (-1, size) for dim, size in zip(dims, shape, strict=True))
