"""The embedded model server through a plain TF Serving client: Predict, GetModelMetadata,
GetModelStatus, their errors, concurrency, and the real `python -m serving.model_server` CLI.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tensorflow_serving.apis import (
    get_model_metadata_pb2,
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_service_pb2_grpc,
)

from serving import stack
from serving.model_server import ServerOptions, build_single_model_config, create_server
from serving.protos.tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2
from tests.model_fixtures.keras_classifier import export_test_model, random_images

ROOT = Path(__file__).resolve().parent.parent
MODEL = "digits"


@pytest.fixture(scope="module")
def digits_base_path(tmp_path_factory) -> Path:
    """Two versions of a tiny classifier; version 2 has different weights than version 1."""
    base_path = tmp_path_factory.mktemp("digits")
    export_test_model(base_path / "1", seed=1)
    export_test_model(base_path / "2", seed=2)
    return base_path


@pytest.fixture(scope="module")
def reference(digits_base_path):
    """version -> the SavedModel's own serving_default function, loaded by TensorFlow directly."""
    return {
        version: tf.saved_model.load(str(digits_base_path / str(version))).signatures["serving_default"]
        for version in (1, 2)
    }


@pytest.fixture(scope="module")
def channel(digits_base_path):
    config = build_single_model_config(MODEL, str(digits_base_path))
    config.model_config_list.config[0].model_version_policy.all.SetInParent()
    server, port = create_server("127.0.0.1:0", config, ServerOptions(file_system_poll_wait_seconds=0))
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel
    server.stop(0)


@pytest.fixture(scope="module")
def prediction_stub(channel):
    return prediction_service_pb2_grpc.PredictionServiceStub(channel)


@pytest.fixture(scope="module")
def model_stub(channel):
    return model_service_pb2_grpc.ModelServiceStub(channel)


def predict_request(images: np.ndarray, name: str = MODEL, **model_spec) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    for key, value in model_spec.items():
        if key == "version":
            request.model_spec.version.value = value
        else:
            setattr(request.model_spec, key, value)
    request.inputs["images"].CopyFrom(tf.make_tensor_proto(images))
    return request


def rpc_error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call(request, timeout=30)
    return raised.value


def test_predict_matches_the_saved_model_and_serves_the_latest_version(prediction_stub, reference):
    images = random_images(4)
    response = prediction_stub.Predict(predict_request(images), timeout=30)
    assert response.model_spec.name == MODEL
    assert response.model_spec.version.value == 2
    assert response.model_spec.signature_name == "serving_default"
    expected = reference[2](images=tf.constant(images))["probabilities"].numpy()
    np.testing.assert_allclose(
        tf.make_ndarray(response.outputs["probabilities"]), expected, rtol=1e-5, atol=1e-6
    )


def test_outputs_are_typed_fields_by_default_as_in_tf_serving(prediction_stub):
    output = prediction_stub.Predict(predict_request(random_images(2)), timeout=30).outputs["probabilities"]
    assert len(output.float_val) == 20 and not output.tensor_content
    assert [dim.size for dim in output.tensor_shape.dim] == [2, 10]


def test_specific_version(prediction_stub, reference):
    images = random_images(3, seed=5)
    response = prediction_stub.Predict(predict_request(images, version=1), timeout=30)
    assert response.model_spec.version.value == 1
    expected = reference[1](images=tf.constant(images))["probabilities"].numpy()
    np.testing.assert_allclose(
        tf.make_ndarray(response.outputs["probabilities"]), expected, rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize(
    ("request_kwargs", "code", "message"),
    [
        ({"name": "nope"}, grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(nope)"),
        ({"version": 3}, grpc.StatusCode.NOT_FOUND, f"Servable not found for request: Specific({MODEL}, 3)"),
        (
            {"version_label": "stable"},
            grpc.StatusCode.INVALID_ARGUMENT,
            "Unrecognized servable version label: stable",
        ),
        ({"name": ""}, grpc.StatusCode.INVALID_ARGUMENT, "ModelSpec has no name specified."),
        (
            {"signature_name": "x"},
            grpc.StatusCode.FAILED_PRECONDITION,
            'Serving signature key "x" not found.',
        ),
    ],
)
def test_model_spec_errors(prediction_stub, request_kwargs, code, message):
    error = rpc_error(prediction_stub.Predict, predict_request(random_images(1), **request_kwargs))
    assert (error.code(), error.details()) == (code, message)


def test_missing_model_spec(prediction_stub):
    error = rpc_error(prediction_stub.Predict, predict_pb2.PredictRequest())
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, "Missing ModelSpec")


def test_wrong_input_name_lists_sent_and_expected_keys(prediction_stub):
    request = predict_request(random_images(1))
    request.inputs["pixels"].CopyFrom(request.inputs["images"])
    error = rpc_error(prediction_stub.Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        "input size does not match signature: 2!=1 len({images,pixels}) != len({images}). "
        "Sent extra: {pixels}. Missing but required: {}."
    )
    del request.inputs["images"]
    error = rpc_error(prediction_stub.Predict, request)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith(
        "Signature input alias: images(feed name: serving_default_images:0) not found in request"
    )


def test_wrong_dtype_answers_tensorflows_message(prediction_stub):
    request = predict_request(np.zeros((1, 28, 28, 1), np.int64))
    error = rpc_error(prediction_stub.Predict, request)
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "Expects arg[0] to be float but int64 is provided",
    )


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 27, 28, 1), (1, 28, 28, 3)])
def test_wrong_shape_is_refused_before_it_reaches_a_kernel(prediction_stub, shape):
    error = rpc_error(prediction_stub.Predict, predict_request(np.zeros(shape, np.float32)))
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == (
        f"Cannot feed value of shape {shape!r} for Tensor serving_default_images:0, "
        "which has shape (None, 28, 28, 1)"
    )


def test_malformed_tensor(prediction_stub):
    request = predict_request(random_images(1))
    request.inputs["images"].tensor_content = b"\x00" * 7
    error = rpc_error(prediction_stub.Predict, request)
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT, "tensor parsing error: images"
    )


@pytest.mark.parametrize(
    "dims",
    [[-1, 28, 28, 1], [1] * 255, [2**40, 2**40, 1, 1]],
    ids=["negative size", "255 dimensions", "more elements than an int64"],
)
def test_a_shape_tensorflow_cannot_hold_is_a_parsing_error(prediction_stub, dims):
    """Tensor::FromProto refuses it (TensorShape::IsValid); NumPy would have filled in the -1."""
    request = predict_request(random_images(1))
    del request.inputs["images"].tensor_shape.dim[:]
    request.inputs["images"].tensor_shape.dim.extend(
        tensor_shape_pb2.TensorShapeProto.Dim(size=d) for d in dims
    )
    error = rpc_error(prediction_stub.Predict, request)
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT, "tensor parsing error: images"
    )


@pytest.mark.parametrize(
    ("dtype", "name"), [(types_pb2.DT_RESOURCE, "resource"), (types_pb2.DT_VARIANT, "variant")]
)
def test_a_resource_or_variant_tensor_is_the_wrong_type(prediction_stub, dtype, name):
    """TensorFlow parses these, then Session::Run refuses them for a float input; NumPy has no type
    for them."""
    request = predict_request(random_images(1))
    shape = tensor_shape_pb2.TensorShapeProto(dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=1)])
    request.inputs["images"].CopyFrom(tensor_pb2.TensorProto(dtype=dtype, tensor_shape=shape))
    error = rpc_error(prediction_stub.Predict, request)
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT, f"Expects arg[0] to be float but {name} is provided"
    )


def test_output_filter(prediction_stub):
    request = predict_request(random_images(1))
    request.output_filter.append("probabilities")
    assert list(prediction_stub.Predict(request, timeout=30).outputs) == ["probabilities"]
    request.output_filter.append("logits")
    error = rpc_error(prediction_stub.Predict, request)
    assert (error.code(), error.details()) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "output tensor alias not found in signature: logits "
        "Outputs expected to be in the set {probabilities}.",
    )


def test_empty_batch(prediction_stub):
    response = prediction_stub.Predict(predict_request(np.zeros((0, 28, 28, 1), np.float32)), timeout=30)
    assert tf.make_ndarray(response.outputs["probabilities"]).shape == (0, 10)


def test_get_model_metadata_returns_the_saved_models_signature_defs(prediction_stub):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=["signature_def"])
    request.model_spec.name = MODEL
    response = prediction_stub.GetModelMetadata(request, timeout=30)
    assert (response.model_spec.name, response.model_spec.version.value) == (MODEL, 2)
    signature_map = get_model_metadata_pb2.SignatureDefMap()
    assert response.metadata["signature_def"].Unpack(signature_map)
    signature = signature_map.signature_def["serving_default"]
    images = signature.inputs["images"]
    assert [dim.size for dim in images.tensor_shape.dim] == [-1, 28, 28, 1]
    assert images.dtype == tf.float32.as_datatype_enum
    assert [dim.size for dim in signature.outputs["probabilities"].tensor_shape.dim] == [-1, 10]
    assert signature.method_name == "tensorflow/serving/predict"


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ([], "GetModelMetadataRequest must specify at least one metadata_field"),
        (["labels"], "Metadata field labels is not supported"),
    ],
)
def test_get_model_metadata_field_errors(prediction_stub, fields, message):
    request = get_model_metadata_pb2.GetModelMetadataRequest(metadata_field=fields)
    request.model_spec.name = MODEL
    error = rpc_error(prediction_stub.GetModelMetadata, request)
    assert (error.code(), error.details()) == (grpc.StatusCode.INVALID_ARGUMENT, message)


def test_get_model_status(model_stub):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = MODEL
    response = model_stub.GetModelStatus(request, timeout=30)
    available = get_model_status_pb2.ModelVersionStatus.AVAILABLE
    assert [(status.version, status.state) for status in response.model_version_status] == [
        (2, available),
        (1, available),
    ]
    assert all(
        status.HasField("status") and status.status.error_code == 0
        for status in response.model_version_status
    )
    assert response.model_version_status[0].status.error_message == ""


@pytest.mark.parametrize(
    ("name", "version", "message"),
    [
        ("nope", None, "Could not find any versions of model nope"),
        (MODEL, 7, f"Could not find version 7 of model {MODEL}"),
    ],
)
def test_get_model_status_not_found(model_stub, name, version, message):
    request = get_model_status_pb2.GetModelStatusRequest()
    request.model_spec.name = name
    if version is not None:
        request.model_spec.version.value = version
    error = rpc_error(model_stub.GetModelStatus, request)
    assert (error.code(), error.details()) == (grpc.StatusCode.NOT_FOUND, message)


def test_health_service_reports_serving(channel):
    stub = health_pb2_grpc.HealthStub(channel)
    for service in ("", "PredictionService", "tensorflow.serving.PredictionService"):
        response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=30)
        assert response.status == health_pb2.HealthCheckResponse.SERVING


def test_concurrent_predictions_each_get_their_own_answer(prediction_stub, reference):
    batches = [random_images(1 + index % 3, seed=100 + index) for index in range(16)]
    expected = [reference[2](images=tf.constant(batch))["probabilities"].numpy() for batch in batches]
    answers: list[np.ndarray | None] = [None] * len(batches)
    start = threading.Barrier(len(batches))

    def predict(index: int) -> None:
        start.wait()
        for _ in range(5):
            response = prediction_stub.Predict(predict_request(batches[index]), timeout=60)
            answers[index] = tf.make_ndarray(response.outputs["probabilities"])
            np.testing.assert_allclose(answers[index], expected[index], rtol=1e-5, atol=1e-6)

    threads = [threading.Thread(target=predict, args=(index,)) for index in range(len(batches))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for answer, want in zip(answers, expected, strict=True):
        assert answer is not None
        np.testing.assert_allclose(answer, want, rtol=1e-5, atol=1e-6)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_command_line_serves_a_prediction(digits_base_path, reference):
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "serving.model_server",
        f"--port={port}",
        "--model_name",
        MODEL,
        f"--model_base_path={digits_base_path}",
    ]
    # As `make serve` runs it: oneDNN on, keeping each kernel's reordered weights (serving/stack.py).
    environment = {**stack.model_server_environment(), "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "2"}
    process = subprocess.Popen(command, cwd=ROOT, env=environment, stderr=subprocess.PIPE, text=True)
    try:
        lines = []
        for line in process.stderr:  # the server logs this once it accepts calls
            lines.append(line)
            if "Running gRPC ModelServer at" in line:
                break
        assert f"Running gRPC ModelServer at 0.0.0.0:{port} ..." in lines[-1], "".join(lines)
        images = random_images(2, seed=9)
        expected = reference[2](images=tf.constant(images))["probabilities"].numpy()
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            answers = [
                tf.make_ndarray(stub.Predict(predict_request(images), timeout=60).outputs["probabilities"])
                for _ in range(3)
            ]
        # The server runs oneDNN's kernels; this process runs TensorFlow's choice, Eigen's on a CPU
        # without AVX-512 VNNI or BF16, AVX-VNNI or AMX. Their sums round differently, by at most
        # 3e-7 relative on pixelgate's exports (TF_ENABLE_ONEDNN_OPTS 0 against 1, 8 images each).
        np.testing.assert_allclose(answers[0], expected, rtol=1e-5, atol=1e-6)
        # The later runs use the weights oneDNN reordered and kept on the first: the same answers.
        for answer in answers[1:]:
            np.testing.assert_allclose(answer, answers[0], rtol=1e-6, atol=1e-7)
        process.terminate()
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        process.stderr.close()


def test_command_line_refuses_unknown_flags():
    command = [sys.executable, "-m", "serving.model_server", "--model_base_path=/models/x", "--colour=blue"]
    environment = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60)
    assert result.returncode == 255
    assert result.stdout.startswith("unknown argument: --colour=blue\nusage: python -m serving.model_server")
