"""TensorProto to and from NumPy where TensorFlow's own conversions are needed: request tensors
in, output tensors out the two ways TF Serving writes them.

By default TF Serving fills the typed repeated fields (Tensor::AsProtoField: `float_val`...);
with --enable_serialization_as_tensor_content it writes raw `tensor_content`
(AsProtoTensorContent). Clients decode either with tf.make_ndarray.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from serving import tensors
from serving.protos.tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

# Types TensorFlow parses from a request but NumPy cannot hold.
_OPAQUE_TYPES = frozenset({types_pb2.DT_RESOURCE, types_pb2.DT_VARIANT})


@functools.lru_cache(maxsize=64)
def _dtype_enum(dtype: np.dtype) -> int:
    try:
        return tf.as_dtype(dtype).as_datatype_enum
    except TypeError:
        return types_pb2.DT_INVALID


def data_type(array: np.ndarray) -> int:
    """The TensorFlow DataType of a NumPy array (DT_INVALID for none), as a session feed sees it."""
    return _dtype_enum(array.dtype)


class OpaqueTensor(NamedTuple):
    """A request tensor of type DT_RESOURCE or DT_VARIANT. TF Serving parses it, then Session::Run
    refuses it fed to any other type ("Expects arg[0] to be float but resource is provided"):
    its type is all the checks need."""

    data_type: int


def decode_tensor(proto: tensor_pb2.TensorProto) -> np.ndarray | OpaqueTensor:
    """tf.make_ndarray, with raw numeric `tensor_content` (what clients send) read by NumPy.

    Same values, shape and dtype, and the same ValueError on a malformed tensor, for less
    work on the per-request path. The array is a read-only view of the request's bytes
    (nothing downstream writes to a feed). Typed value fields, strings and rarer types go
    through TensorFlow. A shape Tensor::FromProto refuses (a negative size, which NumPy's
    reshape would fill in, over 254 dimensions, or more elements than an int64 counts) is
    a ValueError too.
    """
    tensors.check_shape(proto.tensor_shape)
    if proto.tensor_content and proto.dtype in tensors.NUMERIC_DTYPES:
        return tensors.make_ndarray(proto)
    if proto.dtype in _OPAQUE_TYPES:
        return OpaqueTensor(proto.dtype)
    return tf.make_ndarray(proto)


def encode_tensor(array: np.ndarray, as_tensor_content: bool = False) -> tensor_pb2.TensorProto:
    """Encode one output as TF Serving would, fields by default or raw content on request."""
    if as_tensor_content:
        return tf.make_tensor_proto(array)
    return _as_proto_field(array)


def _as_proto_field(array: np.ndarray) -> tensor_pb2.TensorProto:
    data_type = tf.as_dtype(array.dtype).as_datatype_enum  # raises for a type TensorFlow has not
    proto = tensor_pb2.TensorProto(
        dtype=data_type,
        tensor_shape=tensor_shape_pb2.TensorShapeProto(
            dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=size) for size in array.shape]
        ),
    )
    flat = array.reshape(-1)
    if data_type in (types_pb2.DT_HALF, types_pb2.DT_BFLOAT16):
        proto.half_val.extend(flat.view(np.uint16).tolist())  # the raw 16 bits, as TF stores them
    elif data_type in (types_pb2.DT_COMPLEX64, types_pb2.DT_COMPLEX128):
        pairs = np.stack([flat.real, flat.imag], axis=-1).reshape(-1).tolist()
        (proto.scomplex_val if data_type == types_pb2.DT_COMPLEX64 else proto.dcomplex_val).extend(pairs)
    elif data_type in tensors.VALUE_FIELD:
        getattr(proto, tensors.VALUE_FIELD[data_type]).extend(flat.tolist())
    else:
        return tf.make_tensor_proto(array)  # types without a repeated field travel as content
    return proto
