"""The gateway's side of the gRPC hop: one channel per process, a deadline on every call,
and a catalog that learns each model's input, classes and preprocessing at run time.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from serving.gateway.coalescing import Coalescer, CoalescingError
from serving.gateway.errors import (
    GatewayError,
    InvalidRequestError,
    ModelMisconfiguredError,
    ModelNotFoundError,
    ModelServerUnavailableError,
    from_grpc_error,
)
from serving.gateway.metrics import MODEL_SERVER_BATCH_IMAGES, MODEL_SERVER_ERRORS
from serving.gateway.preprocess import PreprocessingSpec
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
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_CHANNEL_OPTIONS = [
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    # gRPC's default backoff grows to 120 s between reconnection attempts: a model server
    # that restarts would then stay unused for up to two minutes. Retry within a second or two.
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]
_UNKNOWN_LABEL = "Unrecognized servable version label"
_MAX_REQUEST_IDS_LENGTH = 1024


@dataclass(frozen=True)
class TlsSettings:
    """TLS to the model server; `ca` empty means the system's CAs; cert + key for mutual TLS."""

    ca: str = ""
    cert: str = ""
    key: str = ""
    server_name: str = ""

    @classmethod
    def from_config(cls, config: dict) -> TlsSettings | None:
        if not (config.get("MODEL_SERVER_TLS") or config.get("MODEL_SERVER_TLS_CA")):
            return None
        if bool(config.get("MODEL_SERVER_TLS_CERT")) != bool(config.get("MODEL_SERVER_TLS_KEY")):
            raise ValueError("MODEL_SERVER_TLS_CERT and MODEL_SERVER_TLS_KEY must be given together")
        return cls(config.get("MODEL_SERVER_TLS_CA", ""), config.get("MODEL_SERVER_TLS_CERT", ""),
                   config.get("MODEL_SERVER_TLS_KEY", ""), config.get("MODEL_SERVER_TLS_SERVER_NAME", ""))

    def credentials(self) -> grpc.ChannelCredentials:
        def read(path: str) -> bytes | None:
            try:
                return Path(path).read_bytes() if path else None
            except OSError as error:
                raise ValueError(f"cannot read TLS file {path}: {error}") from error

        return grpc.ssl_channel_credentials(read(self.ca), read(self.key), read(self.cert))


def create_channel(target: str, tls: TlsSettings | None = None) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
    options = list(_CHANNEL_OPTIONS)
    if tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return grpc.secure_channel(target, tls.credentials(), options=options)


@dataclass(frozen=True)
class ModelInfo:
    """One served model version, as the gateway needs it."""

    name: str
    version: int
    input_key: str
    output_key: str
    spec: PreprocessingSpec
    classes: tuple[str, ...]
    test_accuracy: float | None = None  # the headline figure of the version's evaluation.json


@dataclass(frozen=True)
class VersionStatus:
    version: int
    state: str
    error: str


class ModelServerClient:
    """Thin, typed wrappers over PredictionService and ModelService.

    With a `coalescer`, concurrent predictions of one model version share Predict calls
    (see coalescing.py); requests with more images than a shared call may hold go alone.
    """

    def __init__(self, target: str, timeout: float, tls: TlsSettings | None = None,
                 coalescer: Coalescer | None = None, max_images_per_call: int = 32):
        if max_images_per_call < 1:
            raise ValueError("max_images_per_call must be at least 1")
        self.target = target
        self.timeout = timeout
        self.max_images_per_call = max_images_per_call
        self.channel = create_channel(target, tls)
        self.coalescer = coalescer
        self._prediction = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        self._models = model_service_pb2_grpc.ModelServiceStub(self.channel)
        self._not_coalesced: set[tuple] = set()  # keys whose answers cannot be split by image
        self._not_coalesced_lock = threading.Lock()

    def close(self) -> None:
        self.channel.close()

    def _call(self, method_name: str, request, timeout: float | None = None, request_id: str = ""):
        # No wait_for_ready: while the model server is down a call fails at once (503)
        # instead of waiting out its deadline; the channel reconnects in the background.
        stub = self._models if method_name == "GetModelStatus" else self._prediction
        metadata = (("x-request-id", request_id),) if request_id else None
        try:
            return getattr(stub, method_name)(request, timeout=timeout or self.timeout, metadata=metadata)
        except grpc.RpcError as error:
            raise _failed(method_name, error) from None

    def predict(
        self, name: str, version: int, inputs: dict[str, np.ndarray], output_keys: Sequence[str],
        request_id: str = "",
    ) -> tuple[int, dict[str, np.ndarray]]:
        deadline = time.monotonic() + self.timeout
        if len(inputs) == 1 and len(next(iter(inputs.values()))) > self.max_images_per_call:
            answer = self._predict_in_parts(name, version, inputs, output_keys, request_id, deadline)
            if answer is not None:
                return answer
        if self.coalescer is not None and len(inputs) == 1:
            (input_key, images), = inputs.items()
            key = (name, version, input_key, tuple(output_keys), images.shape[1:], images.dtype.str)
            if len(images) < self.coalescer.max_images and key not in self._not_coalesced:
                def start_call(batch: np.ndarray, request_ids: list[str], timeout: float) -> grpc.Future:
                    return self._start_predict(name, version, input_key, batch, output_keys, timeout,
                                               _joined_request_ids(request_ids))

                def call(batch: np.ndarray, request_ids: list[str], timeout: float) -> Any:
                    return self._call_predict(name, version, input_key, batch, output_keys, timeout,
                                              _joined_request_ids(request_ids))

                try:
                    return self.coalescer.submit(key, images, self.timeout, start_call, _outputs, request_id,
                                                 call)
                except grpc.RpcError as error:
                    # Counted once per call (_count_failed_call, _call_predict), not once per request
                    # it carried; a request whose deadline passed while it queued made no call (its 504
                    # is counted with the gateway's requests).
                    raise from_grpc_error(error) from None
                except CoalescingError as error:
                    with self._not_coalesced_lock:  # each request of the failed call comes here
                        first = key not in self._not_coalesced
                        self._not_coalesced.add(key)
                    if first:
                        logger.warning("model '%s' version %d: predictions are not coalesced: %s",
                                       name, version, error)
                except grpc.FutureCancelledError:  # the channel closed under the call: shutting down
                    raise ModelServerUnavailableError("model server unavailable: the call was cancelled") from None
        request = _predict_request(name, version, inputs, output_keys)
        MODEL_SERVER_BATCH_IMAGES.labels(name).observe(max((len(a) for a in inputs.values()), default=0))
        # After a shared call that could not be split, only what is left of the request's deadline.
        remaining = max(deadline - time.monotonic(), 0.001)
        response = self._call("Predict", request, timeout=remaining, request_id=request_id)
        return _outputs(response)

    def _start_predict(self, name: str, version: int, input_key: str, images: np.ndarray,
                       output_keys: Sequence[str], timeout: float, request_id: str) -> grpc.Future:
        """One Predict call of `images`, as a future whose failure is counted once."""
        request, metadata = self._predict_call(name, version, input_key, images, output_keys, request_id)
        future = self._prediction.Predict.future(request, timeout=timeout, metadata=metadata)
        future.add_done_callback(_count_failed_call)
        return future

    def _call_predict(self, name: str, version: int, input_key: str, images: np.ndarray,
                      output_keys: Sequence[str], timeout: float,
                      request_id: str) -> predict_pb2.PredictResponse:
        """`_start_predict` as a blocking call: its answer, or its grpc.RpcError (counted)."""
        request, metadata = self._predict_call(name, version, input_key, images, output_keys, request_id)
        try:
            return self._prediction.Predict(request, timeout=timeout, metadata=metadata)
        except grpc.RpcError as error:
            _count_error("Predict", error)
            raise

    def _predict_call(self, name: str, version: int, input_key: str, images: np.ndarray,
                      output_keys: Sequence[str], request_id: str) -> tuple[predict_pb2.PredictRequest, Any]:
        """The request and metadata of a Predict call of `images`, its batch size observed."""
        MODEL_SERVER_BATCH_IMAGES.labels(name).observe(len(images))
        metadata = (("x-request-id", request_id),) if request_id else None
        return _predict_request(name, version, {input_key: images}, output_keys), metadata

    def _predict_in_parts(
        self, name: str, version: int, inputs: dict[str, np.ndarray], output_keys: Sequence[str],
        request_id: str, deadline: float,
    ) -> tuple[int, dict[str, np.ndarray]] | None:
        """A request with more images than one call may carry (the model server's max_batch_size
        refuses a larger one) as calls of at most max_images_per_call, sent at once, their answers
        joined in order; None when the answers are not one row per image (then one call it is)."""
        (input_key, images), = inputs.items()
        parts = [images[start:start + self.max_images_per_call]
                 for start in range(0, len(images), self.max_images_per_call)]
        calls = [self._start_predict(name, version, input_key, part, output_keys,
                                     max(deadline - time.monotonic(), 0.001), request_id)
                 for part in parts]
        try:
            answers = [_outputs(call.result()) for call in calls]
        except grpc.RpcError as error:
            for call in calls:
                call.cancel()  # the request has failed: the other parts need not run
            raise from_grpc_error(error) from None
        except grpc.FutureCancelledError:  # the channel closed under the calls: shutting down
            raise ModelServerUnavailableError("model server unavailable: the call was cancelled") from None
        outputs = {}
        for key in answers[0][1]:
            arrays = [outputs_of_part[key] for _, outputs_of_part in answers]
            if any(array.ndim == 0 or len(array) != len(part) for array, part in zip(arrays, parts, strict=True)):
                return None
            outputs[key] = np.concatenate(arrays)
        return answers[0][0], outputs

    def signature(
        self, name: str, version: int | None = None, label: str | None = None
    ) -> tuple[int, meta_graph_pb2.SignatureDef]:
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
        return response.model_spec.version.value, signatures.signature_def[SIGNATURE_NAME]

    def status(self, name: str, timeout: float | None = None) -> list[VersionStatus]:
        request = get_model_status_pb2.GetModelStatusRequest()
        request.model_spec.name = name
        response = self._call("GetModelStatus", request, timeout=timeout)
        state_name = get_model_status_pb2.ModelVersionStatus.State.Name
        return [
            VersionStatus(s.version, state_name(s.state), s.status.error_message)
            for s in response.model_version_status
        ]


def _joined_request_ids(request_ids: list[str]) -> str:
    """A shared call's x-request-id: its requests' IDs, cut at 1 KiB (each may be 128 characters;
    gRPC refuses a call whose metadata passes 8 KiB, and other clients choose these IDs)."""
    joined = ",".join(request_ids)
    if len(joined) <= _MAX_REQUEST_IDS_LENGTH:
        return joined
    return joined[:_MAX_REQUEST_IDS_LENGTH].rpartition(",")[0]


def _predict_request(
    name: str, version: int, inputs: dict[str, np.ndarray], output_keys: Sequence[str]
) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest(output_filter=list(output_keys))
    request.model_spec.name = name
    request.model_spec.signature_name = SIGNATURE_NAME
    request.model_spec.version.value = version
    for key, array in inputs.items():
        request.inputs[key].CopyFrom(make_tensor_proto(array))
    return request


def _outputs(response: predict_pb2.PredictResponse) -> tuple[int, dict[str, np.ndarray]]:
    return response.model_spec.version.value, {key: make_ndarray(t) for key, t in response.outputs.items()}


def _failed(method_name: str, error: grpc.RpcError) -> GatewayError:
    _count_error(method_name, error)
    return from_grpc_error(error)


def _count_error(method_name: str, error: grpc.RpcError) -> None:
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    MODEL_SERVER_ERRORS.labels(method_name, code.name if code else "UNKNOWN").inc()


def _count_failed_call(future: grpc.Future) -> None:
    """A Predict future's done-callback: its failure counted once, whatever number of requests it carried."""
    if future.cancelled():  # the channel closed under it: the gateway is stopping
        return
    error = future.exception()
    if error is not None:
        _count_error("Predict", error)


def _single_key(tensors, preferred: str | None, what: str, name: str) -> str:
    if isinstance(preferred, str) and preferred in tensors:
        return preferred
    if len(tensors) == 1:
        return next(iter(tensors))
    raise ModelNotFoundError(f"model '{name}' has {len(tensors)} {what}s ({sorted(tensors)}); cannot tell which to use")


class ModelCatalog:
    """Which models exist, and for each served version its input key, shape, classes and spec.

    Versions never change once exported, so (name, version) is cached for good; which
    version is "latest" (or carries a label) is re-asked after `ttl` seconds.
    """

    def __init__(self, client: ModelServerClient, base_path: str | Path, names: Sequence[str] = (), ttl: float = 2.0):
        self.client = client
        self.base_path = Path(base_path)
        self.configured_names = tuple(names)
        self.ttl = ttl
        self._infos: dict[tuple[str, int], ModelInfo] = {}
        self._latest: dict[tuple[str, str | None], tuple[float, int]] = {}
        self._lock = threading.Lock()
        self._scanned: tuple[float, list[str]] | None = None

    def model_names(self) -> list[str]:
        if self.configured_names:
            return list(self.configured_names)
        # Every request checks its model name: scan the directory at most once per `ttl`.
        scanned = self._scanned
        if scanned is None or time.monotonic() - scanned[0] >= self.ttl:
            scanned = (time.monotonic(), self._scan_model_directories())
            self._scanned = scanned
        return list(scanned[1])

    def _scan_model_directories(self) -> list[str]:
        try:
            return sorted(
                path.name
                for path in self.base_path.iterdir()
                if path.is_dir() and MODEL_NAME_PATTERN.fullmatch(path.name)
                and any(p.name.isdigit() for p in path.iterdir())
            )
        except OSError:  # missing or unreadable: no models, as the readiness probe will say
            return []

    def check_name(self, name: str) -> None:
        # The name must be one the gateway serves before it is used anywhere, a path above all.
        if not MODEL_NAME_PATTERN.fullmatch(name) or name not in self.model_names():
            shown = repr(name[:64]) + ("..." if len(name) > 64 else "")
            raise ModelNotFoundError(f"unknown model {shown}; available: {', '.join(self.model_names()) or 'none'}")

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> ModelInfo:
        """The ModelInfo of the version a request for (name, version | label | latest) goes to."""
        self.check_name(name)
        if version is None:
            key = (name, label)
            cached = self._latest.get(key)
            if cached and time.monotonic() - cached[0] < self.ttl:
                version = cached[1]
        if version is not None and (name, version) in self._infos:
            return self._infos[(name, version)]
        served_version, signature = self.client.signature(name, version, label)
        info = self._build_info(name, served_version, signature)
        with self._lock:
            self._infos[(name, served_version)] = info
            if version is None:
                self._latest[(name, label)] = (time.monotonic(), served_version)
        return info

    def forget(self, name: str) -> None:
        """Drop cached 'latest' answers, e.g. after the model server said a version is gone."""
        with self._lock:
            for key in [k for k in self._latest if k[0] == name]:
                del self._latest[key]

    def _build_info(self, name: str, version: int, signature: meta_graph_pb2.SignatureDef) -> ModelInfo:
        assets = self.base_path / name / str(version) / "assets"
        spec_values = _read_json(assets / "preprocessing.json")
        if not isinstance(spec_values, dict):
            raise ModelMisconfiguredError(
                f"model '{name}' version {version}: assets/preprocessing.json is not a JSON object")
        input_key = _single_key(signature.inputs, spec_values.get("input_key"), "input", name)
        output_key = _single_key(signature.outputs, spec_values.get("output_key"), "output", name)
        dims = [d.size for d in signature.inputs[input_key].tensor_shape.dim]
        if len(dims) != 4:
            raise ModelNotFoundError(f"model '{name}' takes input of rank {len(dims)}, not an image batch [N,H,W,C]")
        try:
            spec = PreprocessingSpec.from_mapping(spec_values, height=dims[1], width=dims[2], channels=dims[3])
        except (TypeError, ValueError) as error:
            raise ModelMisconfiguredError(
                f"model '{name}' version {version}: assets/preprocessing.json cannot be used: {error}") from None
        output_dims = [d.size for d in signature.outputs[output_key].tensor_shape.dim]
        class_count = max(output_dims[-1], 0) if output_dims else 0  # -1: unknown until it answers
        classes = _read_labels(assets / "labels.txt") or tuple(str(i) for i in range(class_count))
        evaluation = _read_json(self.base_path / name / str(version) / "assets.extra" / "evaluation.json")
        accuracy = evaluation.get("test_accuracy") if isinstance(evaluation, dict) else None
        valid = isinstance(accuracy, int | float) and not isinstance(accuracy, bool) and 0 <= accuracy <= 1
        accuracy = float(accuracy) if valid else None
        return ModelInfo(name, version, input_key, output_key, spec, classes, accuracy)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        logger.warning("ignoring unreadable %s: %s", path, error)
        return {}


def _read_labels(path: Path) -> tuple[str, ...]:
    try:
        return tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
    except OSError:
        return ()
