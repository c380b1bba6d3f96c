"""NumPy arrays to and from TensorFlow's TensorProto, without importing TensorFlow.

Numeric tensors travel in `tensor_content` (raw little-endian bytes), as TF Serving
itself answers; strings in `string_val`. Both ends of the gRPC hop use this module.
"""

from __future__ import annotations

import math

import numpy as np

from serving.protos.tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

_NUMPY_BY_DTYPE = {
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
_DTYPE_BY_NUMPY = {np.dtype(v): k for k, v in _NUMPY_BY_DTYPE.items()}
# tensor_content's byte order, per type.
_WIRE_DTYPE = {k: np.dtype(v).newbyteorder("<") for k, v in _NUMPY_BY_DTYPE.items()}
# The numeric types `make_ndarray` reads (strings aside).
NUMERIC_DTYPES = frozenset(_NUMPY_BY_DTYPE)

# Which repeated field holds the values when tensor_content is empty.
_VALUE_FIELD = {
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
    numpy_dtype = _NUMPY_BY_DTYPE.get(tensor.dtype)
    if numpy_dtype is None:
        raise ValueError(f"unsupported tensor dtype {types_pb2.DataType.Name(tensor.dtype)}")
    if tensor.tensor_content:
        return (
            np.frombuffer(tensor.tensor_content, dtype=_WIRE_DTYPE[tensor.dtype])
            .astype(numpy_dtype, copy=False)
            .reshape(shape)
        )
    values = getattr(tensor, _VALUE_FIELD[tensor.dtype])
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
