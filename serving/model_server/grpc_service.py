"""Thin gRPC servicers for TF Serving's PredictionService and ModelService.

Each method unpacks the request, calls `ModelServerCore`, packs the answer; a
`ModelServerError` becomes its status code and message (cut at 1024 characters plus
"...TRUNCATED", as grpc_status_util.cc does).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from serving.model_server import errors, metrics
from serving.model_server.core import ModelServerCore, model_status_response
from serving.model_server.run_options import run_timeout
from serving.model_server.tensor_encoding import decode_tensor, encode_tensor
from serving.protos.tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    model_management_pb2,
    model_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

logger = logging.getLogger(__name__)

MAX_ERROR_MESSAGE = 1024
NO_DEADLINE_SECONDS = 1e12
DEADLINE_SLACK_SECONDS = 0.05
Response = TypeVar("Response")


def _status_message(message: str) -> str:
    if len(message) > MAX_ERROR_MESSAGE:
        return message[:MAX_ERROR_MESSAGE] + "...TRUNCATED"
    return message


def _seconds_to_deadline(context: grpc.ServicerContext) -> float | None:
    """Seconds left before the call's deadline; None when the client set none."""
    remaining = context.time_remaining()
    # Without a deadline gRPC reports the time to its "infinite future" (~2**63 seconds).
    return None if remaining is None or remaining > NO_DEADLINE_SECONDS else remaining


def handle_errors(
    method: Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Response]],
) -> Callable[..., Awaitable[Response]]:
    """Map core errors to gRPC statuses and log one line per call."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Response:
        call = _Call(method.__name__, request)
        try:
            # TF Serving bounds the session run by the call's deadline (RunOptions.timeout_in_ms).
            with run_timeout(_seconds_to_deadline(context)):
                return await method(self, request, context)
        except asyncio.CancelledError:  # the client cancelled, or its deadline passed
            # A client cancels at its own deadline, which comes before the server's (that one
            # counts from the request's arrival): a cancel within DEADLINE_SLACK of it is the
            # deadline's.
            remaining = context.time_remaining()
            expired = remaining is not None and remaining <= DEADLINE_SLACK_SECONDS
            call.code = grpc.StatusCode.DEADLINE_EXCEEDED if expired else grpc.StatusCode.CANCELLED
            raise
        except Exception as error:
            await context.abort(*call.failed(error))
        finally:
            call.record()
        raise AssertionError("unreachable: context.abort raises")

    return wrapper


class _Call:
    """One call's status, metrics and log line."""

    __slots__ = ("method", "model_name", "started", "code")

    def __init__(self, method: str, request: Any) -> None:
        self.method = method
        if hasattr(request, "model_spec"):
            self.model_name = request.model_spec.name
        else:  # the Open Inference Protocol's requests (oip/grpc_service.py)
            self.model_name = getattr(request, "model_name", "") or getattr(request, "name", "") or "-"
        self.started = time.perf_counter()
        self.code = grpc.StatusCode.OK

    def failed(self, error: Exception) -> tuple[grpc.StatusCode, str]:
        """The status a failure answers: a core error's own; anything else is INTERNAL."""
        if isinstance(error, errors.ModelServerError):
            self.code = error.code
            return error.code, _status_message(error.message)
        # An unexpected fault answers INTERNAL, never kills the server.
        self.code = grpc.StatusCode.INTERNAL
        logger.exception("%s failed", self.method)
        return self.code, _status_message(f"{type(error).__name__}: {error}")

    def record(self) -> None:
        elapsed = time.perf_counter() - self.started
        api = metrics.INSTRUMENTED_APIS.get(self.method)
        if api is not None:
            metrics.record_request(self.model_name, api, "GRPC", self.code, elapsed)
        logger.debug(
            "%s model=%s status=%s %.1fms", self.method, self.model_name, self.code.name, elapsed * 1000
        )


def _version_choice(model_spec: model_pb2.ModelSpec) -> dict[str, Any]:
    choice = model_spec.WhichOneof("version_choice")
    if choice == "version":
        return {"version": model_spec.version.value}
    if choice == "version_label":
        return {"version_label": model_spec.version_label}
    return {}


def _require_model_spec(request: Any) -> None:
    if not request.HasField("model_spec"):
        raise errors.InvalidArgument("Missing ModelSpec")


class PredictionServiceServicer(prediction_service_pb2_grpc.PredictionServiceServicer):
    """tensorflow.serving.PredictionService: Predict, Classify, Regress, MultiInference, GetModelMetadata.

    Coroutines on the server's event loop: with batching on, a call waits for its batch
    without holding a thread, and the loop answers a whole batch in one wake-up. At most
    `max_concurrent_runs` (--grpc_max_threads) calls that run the model do so at once, as
    many as TF Serving's threads; the rest wait their turn.
    """

    def __init__(
        self, core: ModelServerCore, tensor_content: bool = False, max_concurrent_runs: int = 64
    ) -> None:
        self._core = core
        self._tensor_content = tensor_content
        self._max_concurrent_runs = max(max_concurrent_runs, 1)
        self._run_slots: asyncio.Semaphore | None = None  # made on the loop, at the first call

    def run_slots(self) -> asyncio.Semaphore:
        """The slots every call that runs a model takes, v2's ModelInfer included."""
        if self._run_slots is None:
            self._run_slots = asyncio.Semaphore(self._max_concurrent_runs)
        return self._run_slots

    @handle_errors
    async def Predict(
        self, request: predict_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> predict_pb2.PredictResponse:
        _require_model_spec(request)
        async with self.run_slots():
            result = await self._core.predict(
                request.model_spec.name,
                request.inputs,
                signature_name=request.model_spec.signature_name,
                output_filter=list(request.output_filter),
                decode=decode_tensor,
                **_version_choice(request.model_spec),
            )
        response = predict_pb2.PredictResponse()
        response.model_spec.name = result.model_name
        response.model_spec.version.value = result.version
        response.model_spec.signature_name = result.signature_name
        for alias, value in result.outputs.items():
            response.outputs[alias].CopyFrom(encode_tensor(value, self._tensor_content))
        return response

    @handle_errors
    async def GetModelMetadata(
        self, request: get_model_metadata_pb2.GetModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> get_model_metadata_pb2.GetModelMetadataResponse:
        _require_model_spec(request)
        metadata = self._core.get_model_metadata(
            request.model_spec.name, list(request.metadata_field), **_version_choice(request.model_spec)
        )
        response = get_model_metadata_pb2.GetModelMetadataResponse()
        response.model_spec.name = metadata.model_name
        response.model_spec.version.value = metadata.version
        response.metadata["signature_def"].Pack(metadata.signature_def_map())
        return response

    @handle_errors
    async def Classify(
        self, request: classification_pb2.ClassificationRequest, context: grpc.aio.ServicerContext
    ) -> classification_pb2.ClassificationResponse:
        _require_model_spec(request)
        async with self.run_slots():
            answer = await self._core.classify(
                request.model_spec.name,
                request.input,
                signature_name=request.model_spec.signature_name,
                **_version_choice(request.model_spec),
            )
        return classification_pb2.ClassificationResponse(model_spec=answer.model_spec, result=answer.result)

    @handle_errors
    async def Regress(
        self, request: regression_pb2.RegressionRequest, context: grpc.aio.ServicerContext
    ) -> regression_pb2.RegressionResponse:
        _require_model_spec(request)
        async with self.run_slots():
            answer = await self._core.regress(
                request.model_spec.name,
                request.input,
                signature_name=request.model_spec.signature_name,
                **_version_choice(request.model_spec),
            )
        return regression_pb2.RegressionResponse(model_spec=answer.model_spec, result=answer.result)

    @handle_errors
    async def MultiInference(
        self, request: inference_pb2.MultiInferenceRequest, context: grpc.aio.ServicerContext
    ) -> inference_pb2.MultiInferenceResponse:
        async with self.run_slots():
            return await self._core.multi_inference(request)


class ModelServiceServicer(model_service_pb2_grpc.ModelServiceServicer):
    """tensorflow.serving.ModelService: GetModelStatus and HandleReloadConfigRequest."""

    def __init__(self, core: ModelServerCore) -> None:
        self._core = core

    @handle_errors
    async def GetModelStatus(
        self, request: get_model_status_pb2.GetModelStatusRequest, context: grpc.aio.ServicerContext
    ) -> get_model_status_pb2.GetModelStatusResponse:
        _require_model_spec(request)
        version = request.model_spec.version.value if request.model_spec.HasField("version") else None
        return model_status_response(self._core.get_model_status(request.model_spec.name, version))

    def HandleReloadConfigRequest(
        self, request: model_management_pb2.ReloadConfigRequest, context: grpc.ServicerContext
    ) -> model_management_pb2.ReloadConfigResponse:
        # A plain method, which grpc.aio runs on its thread pool: loading blocks. Unlike the
        # others, it answers a response carrying the status as well.
        response = model_management_pb2.ReloadConfigResponse()
        for metric_name in request.metric_names:
            response.metric.add(name=metric_name, int64_value_increase=0)  # no metrics collected here
        try:
            self._core.reload_config(request.config)
        except errors.ModelServerError as error:
            logger.error("ReloadConfig failed: %s", error.message)
            response.status.error_code = error.code.value[0]
            response.status.error_message = error.message
            context.set_code(error.code)
            context.set_details(_status_message(error.message))
        return response
