"""The Open Inference Protocol's `inference.GRPCInferenceService` on the gRPC port, with the
generated stubs: typed and raw contents equal TF Serving's Predict, the classification
extension, metadata and readiness, the health service, metrics, and clear status codes.
"""

from __future__ import annotations

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from serving.model_server import metrics
from serving.protos.inference import grpc_predict_v2_pb2 as pb
from serving.protos.inference import grpc_predict_v2_pb2_grpc
from tests.oip_clients.harness import LABELS, MODEL, images, oip_server, tf_serving_predict

__all__ = ["oip_server"]  # the fixture, imported for pytest


@pytest.fixture(scope="module")
def stub(oip_server):
    with grpc.insecure_channel(oip_server.grpc) as channel:
        yield grpc_predict_v2_pb2_grpc.GRPCInferenceServiceStub(channel)


def _request(batch: np.ndarray, raw: bool = True, **fields) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=MODEL, **fields)
    tensor = request.inputs.add(name="images", datatype="FP32", shape=batch.shape)
    if raw:
        request.raw_input_contents.append(batch.tobytes())
    else:
        tensor.contents.fp32_contents.extend(batch.reshape(-1).tolist())
    return request


def _probabilities(response: pb.ModelInferResponse) -> np.ndarray:
    (output,) = response.outputs
    assert (output.name, output.datatype) == ("probabilities", "FP32")
    return np.frombuffer(response.raw_output_contents[0], dtype="<f4").reshape(tuple(output.shape))


@pytest.mark.parametrize("raw", [True, False])
def test_model_infer_equals_predict(oip_server, stub, raw):
    batch = images(6, seed=4)
    before = metrics.REQUEST_COUNT.value(MODEL, "OK")
    response = stub.ModelInfer(_request(batch, raw, id="abc"), timeout=30)
    assert (response.model_name, response.model_version, response.id) == (MODEL, "2", "abc")
    expected = tf_serving_predict(oip_server.grpc, batch)
    np.testing.assert_allclose(_probabilities(response), expected, rtol=0, atol=1e-6)
    assert metrics.REQUEST_COUNT.value(MODEL, "OK") >= before + 2  # ModelInfer counts as a Predict
    version_one = stub.ModelInfer(_request(batch, raw, model_version="1"), timeout=30)
    assert version_one.model_version == "1"
    np.testing.assert_allclose(
        _probabilities(version_one), tf_serving_predict(oip_server.grpc, batch, 1), atol=1e-6
    )


def test_classification(stub):
    request = _request(images(2, seed=5))
    request.outputs.add(name="probabilities").parameters["classification"].int64_param = 2
    response = stub.ModelInfer(request, timeout=30)
    (output,) = response.outputs
    assert (output.datatype, list(output.shape)) == ("BYTES", [2, 2])
    raw, items = response.raw_output_contents[0], []
    while raw:
        length = int.from_bytes(raw[:4], "little")
        items.append(raw[4 : 4 + length].decode())
        raw = raw[4 + length :]
    assert len(items) == 4
    for item in items:
        score, index, label = item.split(":")
        assert label == LABELS[int(index)] and 0 <= float(score) <= 1


def test_metadata_readiness_and_health(oip_server, stub):
    assert stub.ServerLive(pb.ServerLiveRequest()).live
    assert stub.ServerReady(pb.ServerReadyRequest()).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name=MODEL, version="1")).ready
    assert stub.ModelReady(pb.ModelReadyRequest(name=MODEL, version="stable")).ready
    metadata = stub.ServerMetadata(pb.ServerMetadataRequest())
    assert (metadata.name, list(metadata.extensions)) == (
        "pixelgate",
        ["binary_tensor_data", "classification"],
    )
    model = stub.ModelMetadata(pb.ModelMetadataRequest(name=MODEL, version="2"))
    assert (model.name, list(model.versions), model.platform) == (MODEL, ["1", "2"], "tensorflow_savedmodel")
    assert [(t.name, t.datatype, list(t.shape)) for t in [*model.inputs, *model.outputs]] == [
        ("images", "FP32", [-1, 28, 28, 1]),
        ("probabilities", "FP32", [-1, 10]),
    ]
    with grpc.insecure_channel(oip_server.grpc) as channel:
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service="inference.GRPCInferenceService"), timeout=30
        )
    assert health.status == health_pb2.HealthCheckResponse.SERVING


def _raw_pair(request: pb.ModelInferRequest) -> pb.ModelInferRequest:
    request.inputs.add().CopyFrom(request.inputs[0])
    return request


ONE = images(1)
CASES = {
    "unknown model": (pb.ModelInferRequest(model_name="nope"), grpc.StatusCode.NOT_FOUND, "Latest(nope)"),
    "unknown version": (_request(ONE, model_version="9"), grpc.StatusCode.NOT_FOUND, "Specific(digits, 9)"),
    "unknown version label": (_request(ONE, model_version="beta"), grpc.StatusCode.NOT_FOUND, "label: beta"),
    "raw bytes not matching the shape": (
        pb.ModelInferRequest(
            model_name=MODEL,
            inputs=[
                pb.ModelInferRequest.InferInputTensor(name="images", datatype="FP32", shape=[2, 28, 28, 1])
            ],
            raw_input_contents=[ONE.tobytes()],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "3136 bytes of data do not match shape [2, 28, 28, 1]",
    ),
    "fewer raw contents than inputs": (
        _raw_pair(_request(ONE)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "1 entries",
    ),
    "contents count not matching the shape": (
        pb.ModelInferRequest(
            model_name=MODEL,
            inputs=[
                pb.ModelInferRequest.InferInputTensor(
                    name="images",
                    datatype="FP32",
                    shape=[1, 28, 28, 1],
                    contents=pb.InferTensorContents(fp32_contents=[0.5]),
                )
            ],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "1 elements do not match",
    ),
    "FP16 in typed contents": (
        pb.ModelInferRequest(
            model_name=MODEL,
            inputs=[pb.ModelInferRequest.InferInputTensor(name="images", datatype="FP16", shape=[1])],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "raw_input_contents",
    ),
    "wrong datatype": (
        pb.ModelInferRequest(
            model_name=MODEL,
            inputs=[
                pb.ModelInferRequest.InferInputTensor(name="images", datatype="INT64", shape=[1, 28, 28, 1])
            ],
            raw_input_contents=[np.zeros(784, "<i8").tobytes()],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "Expects arg[0] to be float but int64 is provided",
    ),
    "negative shape": (
        pb.ModelInferRequest(
            model_name=MODEL,
            inputs=[
                pb.ModelInferRequest.InferInputTensor(name="images", datatype="FP32", shape=[-1, 28, 28, 1])
            ],
            raw_input_contents=[ONE.tobytes()],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "non-negative",
    ),
}


@pytest.mark.parametrize("case", CASES)
def test_errors_are_clear_status_codes(stub, case):
    request, code, fragment = CASES[case]
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelInfer(request, timeout=30)
    assert raised.value.code() == code
    assert fragment in raised.value.details()
    assert stub.ServerLive(pb.ServerLiveRequest(), timeout=30).live


def test_model_ready_errors(stub):
    assert stub.ModelReady(pb.ModelReadyRequest(name=MODEL)).ready
    for name, version in (("nope", ""), (MODEL, "9")):
        with pytest.raises(grpc.RpcError) as raised:
            stub.ModelReady(pb.ModelReadyRequest(name=name, version=version), timeout=30)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
