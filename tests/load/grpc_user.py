"""The gRPC user: calls the model server's Predict directly with the same known-good test
images (already normalized, as the gateway would send them), so that the gateway's share
of the latency shows next to the model server's. Each call is reported through Locust's
request event."""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass

import grpc
import numpy as np
from locust import User, task

from serving.protos.tensorflow_serving.apis import (
    get_model_metadata_pb2,
    predict_pb2,
    prediction_service_pb2_grpc,
)
from serving.tensors import make_ndarray, make_tensor_proto
from tests.load.options import ModelTarget, choose_model, grpc_target, paced_wait
from tests.load.payloads import KnownGood, Sample, load_samples

logger = logging.getLogger(__name__)
SIGNATURE_NAME = "serving_default"
PREDICT_METHOD = "/tensorflow.serving.PredictionService/Predict"
TIMEOUT_SECONDS = 10.0  # the gateway's own default deadline
KNOWN_GOOD = KnownGood()


class AnswerError(Exception):
    """The model server answered, but not what a known-good image should get."""


class CallError(Exception):
    """A failed RPC, worded by its status code so that Locust's error table groups it."""

    @classmethod
    def from_rpc(cls, error: grpc.RpcError) -> CallError:
        return cls(f"{error.code().name}: {error.details()}")


@dataclass(frozen=True)
class PreparedPredict:
    """A PredictRequest for one sample, serialized once, and what its answer must say."""

    request: bytes
    output_key: str
    sample: Sample


def signature_keys(response: get_model_metadata_pb2.GetModelMetadataResponse) -> tuple[str, str]:
    """The input and output keys of serving_default, read from the model (never hard-coded)."""
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    signature = signatures.signature_def[SIGNATURE_NAME]
    # The class probabilities are the one [batch, classes] output; others (an ood_score [batch]) are not.
    outputs = [key for key, tensor in signature.outputs.items() if len(tensor.tensor_shape.dim) == 2]
    if len(signature.inputs) != 1 or len(outputs) != 1:
        raise AnswerError(
            f"{SIGNATURE_NAME} has {len(signature.inputs)} inputs and {len(outputs)} outputs of rank 2"
        )
    return next(iter(signature.inputs)), outputs[0]


def predict_request(
    model: str, input_key: str, output_key: str, pixels: np.ndarray
) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest(output_filter=[output_key])
    request.model_spec.name = model
    request.model_spec.signature_name = SIGNATURE_NAME
    request.inputs[input_key].CopyFrom(make_tensor_proto(pixels.astype(np.float32)))
    return request


class ModelServerUser(User):
    weight = 1
    wait_time = paced_wait

    def on_start(self) -> None:
        # Needs grpc.experimental.gevent.init_gevent() first: the locustfile calls it on import.
        self.channel = grpc.insecure_channel(grpc_target(self.environment.parsed_options))
        self.stub = prediction_service_pb2_grpc.PredictionServiceStub(self.channel)
        # Predict with requests serialized beforehand: the load generator's CPU goes to sending.
        self.predict_serialized = self.channel.unary_unary(
            PREDICT_METHOD,
            request_serializer=None,
            response_deserializer=predict_pb2.PredictResponse.FromString,
        )

    def on_stop(self) -> None:
        self.channel.close()

    @task
    def predict(self) -> None:
        target = choose_model(self.environment.parsed_options)
        prepared = KNOWN_GOOD.get(target.name, lambda: self._find_known_good(target))
        if not prepared:
            return
        call = random.choice(prepared)
        self._call(
            f"Predict {target.name}",
            self.predict_serialized,
            call.request,
            lambda response: self._check(response, call),
        )

    @staticmethod
    def _check(response: predict_pb2.PredictResponse, call: PreparedPredict) -> None:
        probabilities = make_ndarray(response.outputs[call.output_key]).reshape(-1)
        if int(np.argmax(probabilities)) != call.sample.class_index:
            raise AnswerError(
                f"wrong class for a known-good image: expected {call.sample.class_index}, "
                f"got {int(np.argmax(probabilities))}"
            )

    def _call(self, name: str, method, request, check) -> object | None:
        """Call `method`, check its answer, and report the call as Locust's HTTP clients do."""
        started = time.perf_counter()
        response, exception = None, None
        try:
            response = method(request, timeout=TIMEOUT_SECONDS)
        except grpc.RpcError as error:
            exception = CallError.from_rpc(error)
        elapsed_ms = (time.perf_counter() - started) * 1000
        if response is not None:
            try:
                check(response)
            except (AnswerError, KeyError, ValueError) as error:
                exception = (
                    error if isinstance(error, AnswerError) else AnswerError(f"malformed answer: {error!r}")
                )
        self.environment.events.request.fire(
            request_type="gRPC",
            name=name,
            response_time=elapsed_ms,
            response_length=response.ByteSize() if response is not None else 0,
            response=response,
            context={},
            exception=exception,
        )
        return None if exception else response

    def _find_known_good(self, target: ModelTarget) -> list[PreparedPredict] | None:
        options = self.environment.parsed_options
        samples = load_samples(target.dataset, options.candidates)
        metadata_request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
        metadata_request.model_spec.name = target.name
        keys: list[tuple[str, str]] = []
        metadata = self._call(
            f"GetModelMetadata {target.name}",
            self.stub.GetModelMetadata,
            metadata_request,
            lambda response: keys.append(signature_keys(response)),
        )
        if metadata is None:
            return None
        input_key, output_key = keys[0]
        if options.known_good == "calibrate":
            # One batch of all candidates: keep those the served model gets right.
            batch = predict_request(target.name, input_key, output_key, np.stack([s.pixels for s in samples]))
            right: list[Sample] = []

            def keep_right(response: predict_pb2.PredictResponse) -> None:
                classes = make_ndarray(response.outputs[output_key]).reshape(len(samples), -1).argmax(axis=1)
                right.extend(s for s, c in zip(samples, classes, strict=True) if c == s.class_index)
                if not right:
                    raise AnswerError(
                        f"the model got none of {len(samples)} {target.dataset} test images right"
                    )

            if self._call(f"Predict {target.name} [calibrate]", self.stub.Predict, batch, keep_right) is None:
                return None
            logger.info(
                "%s over gRPC: %d of %d %s test images classified right; the load uses those",
                target.name,
                len(right),
                len(samples),
                target.dataset,
            )
            samples = tuple(right)
        return [
            PreparedPredict(
                predict_request(target.name, input_key, output_key, s.pixels[np.newaxis]).SerializeToString(),
                output_key,
                s,
            )
            for s in samples
        ]
