"""The gateway's client of the model server: Predict calls, model metadata and status.

Each call has a deadline, its failure is counted once in the metrics and answered as a
GatewayError. The client makes the calls it is given; which calls to make is the CallPlanner's.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass
from typing import Any, NamedTuple

import grpc
import numpy as np

from serving.gateway.channel import TlsSettings, create_channel, failed_attempts
from serving.gateway.errors import (
    InvalidRequestError,
    ModelNotFoundError,
    ModelServerUnavailableError,
    from_grpc_error,
)
from serving.gateway.metrics import MODEL_SERVER_BATCH_IMAGES, MODEL_SERVER_ERRORS, MODEL_SERVER_FAILOVERS
from serving.model_status import VersionStatus
from serving.protos.tensorflow.core.protobuf import meta_graph_pb2
from serving.protos.tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from serving.tensors import make_ndarray, make_tensor_proto

logger = logging.getLogger(__name__)

SIGNATURE_NAME = "serving_default"
_UNKNOWN_LABEL = "Unrecognized servable version label"
# A shared call's x-request-id carries its requests' IDs up to this length: each may be 128
# characters, gRPC refuses a call whose metadata passes 8 KiB, and other clients choose these IDs.
_MAX_REQUEST_IDS_LENGTH = 1024
# The generated gRPC stubs are untyped.
_PREDICTION_STUB: Any = prediction_service_pb2_grpc.PredictionServiceStub
_MODEL_STUB: Any = model_service_pb2_grpc.ModelServiceStub
_CANCELLED = "model server unavailable: the call was cancelled"
_FAILOVER_READING_SECONDS = 1.0  # how often a worker adds gRPC's retries to the failover counter


@dataclass(frozen=True)
class PredictCall:
    """One Predict call: a batch of images for one model version, and the requests it answers."""

    model: str
    version: int | None  # None: whichever version is latest on the model server that takes the call
    input_key: str
    output_keys: tuple[str, ...]
    images: np.ndarray
    request_ids: tuple[str, ...] = ()
    signature_name: str = SIGNATURE_NAME
    label: str | None = None  # with version None: the version the model server that takes the call labels so

    @property
    def key(self) -> tuple[Any, ...]:
        """Calls with the same key can be joined into one (see CallPlanner)."""
        return (self.model, self.version, self.label, self.signature_name, self.input_key, self.output_keys,
                self.images.shape[1:], self.images.dtype.str)


class Answer(NamedTuple):
    """What a Predict call answered: the version that served it and its outputs by key."""

    version: int
    outputs: dict[str, np.ndarray]


class ModelServerClient:
    """Typed calls to PredictionService and ModelService over one channel."""

    def __init__(self, target: str, timeout: float, tls: TlsSettings | None = None):
        self.target = target
        self.timeout = timeout  # of metadata and status calls without one of their own
        self.channel = create_channel(target, tls)
        self._failovers = _FailoverCount.of(target)
        self._prediction = _PREDICTION_STUB(self.channel)
        self._models = _MODEL_STUB(self.channel)

    def close(self) -> None:
        self.channel.close()

    def send(self, call: PredictCall, deadline: float) -> Answer:
        """Make `call`, blocking until it answers or `deadline` (time.monotonic()) passes."""
        request, metadata = _predict_request(call)
        try:
            response = self._prediction.Predict(request, timeout=_until(deadline), metadata=metadata)
        except grpc.RpcError as error:
            _count_error("Predict", error)
            raise from_grpc_error(error) from None
        finally:
            self._failovers.update()
        return _answer(response)

    def start(self, call: PredictCall, deadline: float) -> Future[Answer]:
        """Start `call`: its Answer, or the GatewayError it failed with, arrives in the future.

        The future is completed on gRPC's callback thread; cancelling it cancels the call."""
        request, metadata = _predict_request(call)
        rpc = self._prediction.Predict.future(request, timeout=_until(deadline), metadata=metadata)
        answer: Future[Answer] = Future()
        answer.add_done_callback(lambda done: rpc.cancel() if done.cancelled() else None)
        rpc.add_done_callback(lambda done: _complete(answer, done))
        rpc.add_done_callback(lambda done: self._failovers.update())
        return answer

    def signatures(self, name: str, version: int | None = None,
                   label: str | None = None) -> tuple[int, Mapping[str, meta_graph_pb2.SignatureDef]]:
        """The served version of (name, version | label | latest) and its signatures by name, one of
        them serving_default."""
        request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        request.model_spec.name = name
        if version is not None:
            request.model_spec.version.value = version
        elif label:
            request.model_spec.version_label = label
        try:
            response = self._call("GetModelMetadata", request)
        except InvalidRequestError as error:
            if label and _UNKNOWN_LABEL in error.message:
                raise ModelNotFoundError(f"model '{name}' has no version labelled '{label}'") from None
            raise
        signatures = get_model_metadata_pb2.SignatureDefMap()
        response.metadata["signature_def"].Unpack(signatures)
        if SIGNATURE_NAME not in signatures.signature_def:
            raise ModelNotFoundError(f"model '{name}' has no '{SIGNATURE_NAME}' signature")
        return response.model_spec.version.value, signatures.signature_def

    def status(self, name: str, timeout: float | None = None) -> list[VersionStatus]:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        response = self._call("GetModelStatus", request, timeout)
        state_name = get_model_status_pb2.ModelVersionStatus.State.Name
        return [VersionStatus(s.version, state_name(s.state), s.status.error_message)
                for s in response.model_version_status]

    def _call(self, method_name: str, request: Any, timeout: float | None = None) -> Any:
        # No wait_for_ready: while the model server is down a call fails at once (503)
        # instead of waiting out its deadline; the channel reconnects in the background.
        stub = self._models if method_name == "GetModelStatus" else self._prediction
        try:
            return getattr(stub, method_name)(request, timeout=timeout or self.timeout)
        except grpc.RpcError as error:
            _count_error(method_name, error)
            raise from_grpc_error(error) from None


class _FailoverCount:
    """Adds the retries gRPC made on this process's channels to `target` to MODEL_SERVER_FAILOVERS, at
    most once a second (reading channelz walks every channel): one per target, as they are summed."""

    _by_target: dict[str, _FailoverCount] = {}
    _creating = threading.Lock()

    def __init__(self, target: str):
        self.target = target
        self._lock = threading.Lock()
        self._counted = failed_attempts(target)
        self._read_at = time.monotonic()
        self._warned = False

    @classmethod
    def of(cls, target: str) -> _FailoverCount:
        with cls._creating:
            if target not in cls._by_target:
                cls._by_target[target] = cls(target)
            return cls._by_target[target]

    def update(self) -> None:
        if time.monotonic() - self._read_at < _FAILOVER_READING_SECONDS or not self._lock.acquire(False):
            return
        try:
            self._read_at = time.monotonic()
            failed = failed_attempts(self.target)
            # Fewer than before: a channel was closed and its counts went with it.
            MODEL_SERVER_FAILOVERS.inc(max(failed - self._counted, 0))
            self._counted = failed
        except Exception:  # noqa: BLE001 - a metric must never cost the call it follows its answer
            if not self._warned:  # once: it is read every second
                logger.warning("cannot read gRPC's channelz for the failover counter", exc_info=True)
                self._warned = True
        finally:
            self._lock.release()


def joined_request_ids(request_ids: Sequence[str]) -> str:
    """A call's x-request-id: its requests' IDs, comma-separated, cut at whole IDs."""
    joined = ",".join(request_ids)
    if len(joined) <= _MAX_REQUEST_IDS_LENGTH:
        return joined
    return joined[:_MAX_REQUEST_IDS_LENGTH].rpartition(",")[0]


def _until(deadline: float) -> float:
    return max(deadline - time.monotonic(), 0.001)


def _predict_request(call: PredictCall) -> tuple[predict_pb2.PredictRequest, Any]:
    """The request and metadata of `call`, its batch size observed."""
    MODEL_SERVER_BATCH_IMAGES.labels(call.model).observe(len(call.images))
    request = predict_pb2.PredictRequest(output_filter=list(call.output_keys))
    request.model_spec.name = call.model
    request.model_spec.signature_name = call.signature_name
    if call.version is not None:
        request.model_spec.version.value = call.version
    elif call.label is not None:
        request.model_spec.version_label = call.label
    request.inputs[call.input_key].CopyFrom(make_tensor_proto(call.images))
    request_ids = joined_request_ids(call.request_ids)
    return request, ((("x-request-id", request_ids),) if request_ids else None)


def _answer(response: predict_pb2.PredictResponse) -> Answer:
    return Answer(response.model_spec.version.value,
                  {key: make_ndarray(tensor) for key, tensor in response.outputs.items()})


def _complete(answer: Future[Answer], rpc: grpc.Future) -> None:
    """A Predict future's done-callback: `answer` gets its Answer or its error (counted once)."""
    try:
        if rpc.cancelled():  # by `answer.cancel()`, or the channel closing: the gateway is stopping
            answer.set_exception(ModelServerUnavailableError(_CANCELLED))
            return
        error = rpc.exception()
        if error is None:
            answer.set_result(_answer(rpc.result()))
        else:
            _count_error("Predict", error)
            answer.set_exception(from_grpc_error(error))
    except InvalidStateError:  # `answer` was cancelled meanwhile: nobody waits for it
        pass
    except BaseException as unexpected:  # noqa: BLE001 - whoever waits must hear of it
        answer.set_exception(unexpected)


def _count_error(method_name: str, error: grpc.RpcError) -> None:
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    MODEL_SERVER_ERRORS.labels(method_name, code.name if code else "UNKNOWN").inc()
