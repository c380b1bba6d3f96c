"""Predict against one loaded version: TF Serving's RunPredict, check for check and message for message.

Order and wording follow tensorflow_serving/servables/tensorflow/predict_util.cc and
tensorflow/cc/saved_model/util.cc (GetInputValues). Inputs arrive undecoded with a
`decode` function, so a malformed tensor is reported where TF Serving reports it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from typing import Any, NamedTuple, TypeVar

import numpy as np
import tensorflow as tf

from serving.model_server import metrics
from serving.model_server.bundle import SavedModelBundle
from serving.model_server.errors import FailedPrecondition, Internal, InvalidArgument, Unimplemented
from serving.model_server.tensor_encoding import OpaqueTensor, data_type
from serving.protos.tensorflow.core.protobuf import meta_graph_pb2
from serving.tensors import shape_fits, type_name

DEFAULT_SIGNATURE = "serving_default"
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"

RequestValue = TypeVar("RequestValue")


async def run_predict(
    bundle: SavedModelBundle,
    signature_name: str,
    inputs: Mapping[str, RequestValue],
    output_filter: Sequence[str],
    decode: Callable[[RequestValue], object] = np.asarray,
    check_method_name: bool = False,
    executor: Executor | None = None,
) -> tuple[str, dict[str, np.ndarray]]:
    """Run a signature; return the signature name used and its outputs by alias."""
    run = _prepare(bundle, signature_name, inputs, output_filter, decode, check_method_name)
    with metrics.runtime(bundle.model_name, "Predict"):
        values = await bundle.run(run.feeds, run.fetches, executor)
    return run.signature_name, dict(zip(run.aliases, values, strict=True))


class _PreparedRun(NamedTuple):
    signature_name: str
    aliases: list[str]
    feeds: list[tuple[str, np.ndarray]]
    fetches: list[str]


def _prepare(
    bundle: SavedModelBundle,
    signature_name: str,
    inputs: Mapping[str, RequestValue],
    output_filter: Sequence[str],
    decode: Callable[[RequestValue], object],
    check_method_name: bool,
) -> _PreparedRun:
    """RunPredict's checks and tensor parsing, in TF Serving's order; what the session run needs."""
    signature_name = signature_name or DEFAULT_SIGNATURE
    signature = bundle.signature_defs.get(signature_name)
    if signature is None:
        raise FailedPrecondition(f'Serving signature key "{signature_name}" not found.')
    if check_method_name and signature.method_name not in (PREDICT_METHOD, CLASSIFY_METHOD, REGRESS_METHOD):
        raise Internal(
            f"Expected prediction signature method_name to be one of {{{PREDICT_METHOD}, "
            f"{CLASSIFY_METHOD}, {REGRESS_METHOD}}}. Was: {signature.method_name}"
        )
    _verify_inputs_size(signature, inputs)
    feeds = _input_values(signature, inputs, decode)
    aliases, fetches = _output_targets(signature, output_filter)
    _check_feeds(feeds, bundle)
    return _PreparedRun(signature_name, aliases, [(info.name, array) for info, array in feeds], fetches)


def _verify_inputs_size(signature: meta_graph_pb2.SignatureDef, inputs: Mapping[str, object]) -> None:
    sent, expected = set(inputs), set(signature.inputs)
    if len(sent) > len(expected) or (len(sent) < len(expected) and not signature.defaults):
        raise InvalidArgument(
            f"input size does not match signature: {len(sent)}!={len(expected)} "
            f"len({{{_join(sent)}}}) != len({{{_join(expected)}}}). "
            f"Sent extra: {{{_join(sent - expected)}}}. Missing but required: {{{_join(expected - sent)}}}."
        )


def _input_values(
    signature: meta_graph_pb2.SignatureDef,
    inputs: Mapping[str, RequestValue],
    decode: Callable[[Any], object],
) -> list[tuple[meta_graph_pb2.TensorInfo, Any]]:
    feeds = []
    used: set[str] = set()
    value: object
    decoder: Callable[[Any], object]
    for alias in sorted(signature.inputs):
        info = signature.inputs[alias]
        if info.WhichOneof("encoding") != "name":
            raise Unimplemented(
                f"Signature input {alias} is not a dense tensor; only dense inputs are supported"
            )
        if alias in inputs:
            used.add(alias)
            value, decoder = inputs[alias], decode
        elif alias in signature.defaults:
            value, decoder = signature.defaults[alias], tf.make_ndarray
        else:
            raise InvalidArgument(
                f"Signature input alias: {alias}(feed name: {info.name}) not found in request and no "
                f"default value provided. Inputs expected to be in the request {{{_join(inputs)}}}, "
                f"or default input alias set: {_join(signature.defaults)}"
            )
        try:
            decoded = decoder(value)
            array = decoded if isinstance(decoded, OpaqueTensor) else np.asarray(decoded)
        except (TypeError, ValueError, KeyError):  # KeyError: a type tf.make_ndarray has no NumPy type for
            raise InvalidArgument(f"tensor parsing error: {alias}") from None
        feeds.append((info, array))
    if inputs and len(used) != len(inputs):
        raise InvalidArgument(
            f"Inputs contains invalid name. Used request inputs: {_join(used)}, "
            f"request input: {_join(inputs)}"
        )
    return feeds


def _output_targets(
    signature: meta_graph_pb2.SignatureDef, output_filter: Sequence[str]
) -> tuple[list[str], list[str]]:
    aliases: list[str] = []
    for alias in output_filter:
        if alias not in signature.outputs:
            raise InvalidArgument(
                f"output tensor alias not found in signature: {alias} Outputs expected to be in the "
                f"set {{{_join(signature.outputs)}}}."
            )
        if alias in aliases:
            raise InvalidArgument(f"duplicate output tensor alias: {alias}")
        aliases.append(alias)
    if not aliases:  # no filter: every output of the signature
        aliases = sorted(signature.outputs)
    return aliases, [signature.outputs[alias].name for alias in aliases]


def _check_feeds(feeds: list[tuple[meta_graph_pb2.TensorInfo, Any]], bundle: SavedModelBundle) -> None:
    """Type first, then shape, as TF does; fail here rather than in a kernel.

    The type message is Session::Run's own. TF Serving checks no shapes: a kernel fails,
    or, for some oneDNN kernels fed the wrong rank, the process aborts. So a shape that
    contradicts the signature of a graph input (a Placeholder) is refused with TF's
    feed-check message instead. A signature may also name an inner tensor (TF1 graphs
    such as TF Serving's half_plus_two feed `x`, an Identity of parsed examples, [?, 1]); its
    static shape binds nothing, TF Serving feeds it any shape, and so does this.
    """
    for index, (info, array) in enumerate(feeds):
        provided = array.data_type if isinstance(array, OpaqueTensor) else data_type(array)
        if provided != info.dtype:
            raise InvalidArgument(
                f"Expects arg[{index}] to be {type_name(info.dtype)} but {type_name(provided)} is provided"
            )
        if isinstance(array, OpaqueTensor):  # a signature input of that type: nothing to feed it from Python
            raise Unimplemented(f"Feeding a {type_name(provided)} tensor to arg[{index}] is not supported")
    for info, array in feeds:
        if not shape_fits(info.tensor_shape, array.shape) and bundle.is_placeholder(info.name):
            raise InvalidArgument(
                f"Cannot feed value of shape {tuple(array.shape)!r} for Tensor {info.name}, "
                f"which has shape {tf.TensorShape(info.tensor_shape)}"
            )


def _join(names: object) -> str:
    # std::set<std::string> iterates in byte order; absl::StrJoin uses ","
    return ",".join(sorted(names))  # type: ignore[call-overload]
