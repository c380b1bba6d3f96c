"""v2 tensors to and from NumPy: datatypes, JSON `data`, typed gRPC contents, raw bytes.

Each decoder checks what the client sent against the shape and datatype it declared, and
raises InvalidArgument saying what was wrong; whether the tensor suits the model is the
core's check (predict.py), as for TF Serving's Predict. Raw bytes are the binary tensor
data extension's layout, which gRPC's raw contents share: little-endian, row-major, BYTES
elements each prefixed by a 4-byte little-endian length.
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import numpy as np

from serving.model_server.errors import InvalidArgument
from serving.protos.tensorflow.core.framework import types_pb2

BYTES = "BYTES"
# v2 datatype -> NumPy dtype, little-endian as the wire is. BF16 has no NumPy type: metadata only.
NUMPY_BY_DATATYPE: dict[str, np.dtype] = {
    "BOOL": np.dtype("?"),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
_DATATYPE_BY_KIND_SIZE = {(dtype.kind, dtype.itemsize): name for name, dtype in NUMPY_BY_DATATYPE.items()}
DATATYPE_BY_TF = {
    types_pb2.DT_BOOL: "BOOL",
    types_pb2.DT_UINT8: "UINT8",
    types_pb2.DT_UINT16: "UINT16",
    types_pb2.DT_UINT32: "UINT32",
    types_pb2.DT_UINT64: "UINT64",
    types_pb2.DT_INT8: "INT8",
    types_pb2.DT_INT16: "INT16",
    types_pb2.DT_INT32: "INT32",
    types_pb2.DT_INT64: "INT64",
    types_pb2.DT_HALF: "FP16",
    types_pb2.DT_BFLOAT16: "BF16",
    types_pb2.DT_FLOAT: "FP32",
    types_pb2.DT_DOUBLE: "FP64",
    types_pb2.DT_STRING: BYTES,
}
_LENGTH_PREFIX = struct.Struct("<I")
MAX_DIMS = 64  # NumPy's limit, below TensorFlow's 254


def datatype_of(array: np.ndarray) -> str:
    """The v2 datatype of an output array."""
    if array.dtype.kind in "OSU":
        return BYTES
    name = _DATATYPE_BY_KIND_SIZE.get((array.dtype.kind, array.dtype.itemsize))
    if name is None:
        raise InvalidArgument(f"output of type {array.dtype} has no Open Inference Protocol datatype")
    return name


def check_shape(name: str, shape: object) -> tuple[int, ...]:
    """The declared shape, which must be a list of non-negative integers."""
    if not isinstance(shape, Sequence) or isinstance(shape, str | bytes):
        raise InvalidArgument(f"input '{name}': shape must be a list of integers, got {shape!r}")
    for size in shape:
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidArgument(f"input '{name}': shape must be non-negative integers, got {list(shape)}")
    if len(shape) > MAX_DIMS:
        raise InvalidArgument(f"input '{name}': {len(shape)} dimensions, more than {MAX_DIMS}")
    return tuple(int(size) for size in shape)


def _reshaped(name: str, array: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    try:
        return array.reshape(shape)
    except ValueError:  # e.g. no elements but a dimension NumPy cannot index
        raise InvalidArgument(f"input '{name}': shape {list(shape)} is too large") from None


def _numpy_dtype(name: str, datatype: str) -> np.dtype:
    dtype = NUMPY_BY_DATATYPE.get(datatype)
    if dtype is None:
        supported = ", ".join([*NUMPY_BY_DATATYPE, BYTES])
        raise InvalidArgument(f"input '{name}': unsupported datatype {datatype!r} (one of {supported})")
    return dtype


def _count_mismatch(name: str, count: int, shape: tuple[int, ...]) -> InvalidArgument:
    return InvalidArgument(
        f"input '{name}': {count} elements do not match shape {list(shape)} ({math.prod(shape)} elements)"
    )


def from_values(name: str, datatype: str, shape: tuple[int, ...], values: Sequence[object]) -> np.ndarray:
    """A tensor from its flat element values (JSON `data` flattened, or gRPC typed contents)."""
    if len(values) != math.prod(shape):
        raise _count_mismatch(name, len(values), shape)
    if datatype == BYTES:
        items = [_as_bytes(name, value) for value in values]
        array = np.empty(len(items), dtype=object)
        array[:] = items
        return _reshaped(name, array, shape)
    dtype = _numpy_dtype(name, datatype)
    try:
        given = np.asarray(values)
    except ValueError:
        raise InvalidArgument(f"input '{name}': data must be {datatype} values") from None
    if given.size and not _kind_fits(given.dtype.kind, dtype):
        raise InvalidArgument(
            f"input '{name}': data must be {datatype} values, got {given.dtype.name} values"
        )
    if (
        dtype.kind in "iu"
        and given.size
        and (given.min() < np.iinfo(dtype).min or given.max() > np.iinfo(dtype).max)
    ):
        raise InvalidArgument(f"input '{name}': a value is out of {datatype}'s range")
    return _reshaped(name, given.astype(dtype), shape)


def _kind_fits(kind: str, dtype: np.dtype) -> bool:
    # JSON numbers: integers fit any number type, decimals only floats; booleans only BOOL.
    if dtype.kind == "b":
        return kind == "b"
    if dtype.kind == "f":
        return kind in "iuf"
    return kind in "iu"


def _as_bytes(name: str, value: object) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8")
    raise InvalidArgument(f"input '{name}': BYTES data must be strings, got {type(value).__name__}")


def from_json(name: str, datatype: str, shape: tuple[int, ...], data: object) -> np.ndarray:
    """A tensor from JSON `data`: flat or nested lists in row-major order."""
    if not isinstance(data, list):
        data = [data]
    return from_values(name, datatype, shape, list(_flatten(data)))


def _flatten(items: Iterable[object]) -> Iterator[object]:
    for item in items:
        if isinstance(item, list):
            yield from _flatten(item)
        else:
            yield item


def from_raw(name: str, datatype: str, shape: tuple[int, ...], raw: bytes | memoryview) -> np.ndarray:
    """A tensor from raw bytes; their size must be exactly what shape and datatype make."""
    count = math.prod(shape)
    if datatype == BYTES:
        items = list(_split_bytes(name, raw))
        if len(items) != count:
            raise _count_mismatch(name, len(items), shape)
        return from_values(name, datatype, shape, items)
    dtype = _numpy_dtype(name, datatype)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidArgument(
            f"input '{name}': {len(raw)} bytes of data do not match shape {list(shape)} of {datatype} "
            f"({expected} bytes)"
        )
    return _reshaped(name, np.frombuffer(raw, dtype=dtype), shape)


def _split_bytes(name: str, raw: bytes | memoryview) -> Iterator[bytes]:
    view = memoryview(raw)
    offset = 0
    while offset < len(view):
        if offset + _LENGTH_PREFIX.size > len(view):
            raise InvalidArgument(f"input '{name}': BYTES data ends inside an element's 4-byte length")
        (length,) = _LENGTH_PREFIX.unpack_from(view, offset)
        offset += _LENGTH_PREFIX.size
        if offset + length > len(view):
            raise InvalidArgument(f"input '{name}': BYTES element of {length} bytes is truncated")
        yield bytes(view[offset : offset + length])
        offset += length


def to_raw(array: np.ndarray) -> bytes:
    """An output's raw bytes, the layout from_raw reads."""
    if datatype_of(array) == BYTES:
        return b"".join(_LENGTH_PREFIX.pack(len(item)) + item for item in _byte_items(array))
    return np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()


def to_values(array: np.ndarray) -> list[object]:
    """An output's flat values for JSON: numbers, booleans, or (BYTES) UTF-8 text."""
    if datatype_of(array) == BYTES:
        return [item.decode("utf-8", "replace") for item in _byte_items(array)]
    return array.reshape(-1).tolist()


def _byte_items(array: np.ndarray) -> list[bytes]:
    return [item if isinstance(item, bytes) else str(item).encode() for item in array.reshape(-1).tolist()]


def classify(name: str, scores: np.ndarray, count: int, labels: Sequence[str]) -> np.ndarray:
    """Triton's classification extension: per row, the top `count` classes as "score:index:label".

    The last axis holds the classes; the label is left out where the version has none for
    that index. A BYTES array of shape [..., min(count, classes)].
    """
    if isinstance(count, bool) or not isinstance(count, int) or count <= 0:
        raise InvalidArgument(f"output '{name}': classification must be a positive integer, got {count!r}")
    if scores.ndim == 0 or scores.dtype.kind not in "iuf":
        raise InvalidArgument(f"output '{name}': classification needs a numeric output with a class axis")
    top = np.argsort(-scores, axis=-1, kind="stable")[..., :count]
    chosen = np.take_along_axis(scores, top, axis=-1)
    items = [
        f"{score:f}:{index}:{labels[index]}" if index < len(labels) else f"{score:f}:{index}"
        for score, index in zip(chosen.reshape(-1).tolist(), top.reshape(-1).tolist(), strict=True)
    ]
    result = np.empty(len(items), dtype=object)
    result[:] = [item.encode() for item in items]
    return result.reshape(top.shape)


@functools.lru_cache(maxsize=64)
def read_labels(export_dir: str) -> tuple[str, ...]:
    """A version's class names (assets/labels.txt, one a line); none when it has no such file."""
    path = Path(export_dir) / "assets" / "labels.txt"
    try:
        return tuple(path.read_text(encoding="utf-8").splitlines())
    except OSError:
        return ()
