"""A real model server with --enable_batching: concurrent Predict calls merge into one session run
without mixing answers, queue limits answer as TF Serving's do, and per-model batching parameters.
"""

from __future__ import annotations

import shutil
import time
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
import tensorflow as tf
from prometheus_client import REGISTRY

from serving.model_server import ServerOptions, build_single_model_config, create_server
from serving.model_server.errors import ModelServerError
from serving.protos.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from serving.tensors import make_ndarray, make_tensor_proto
from tests.model_fixtures.keras_classifier import export_test_model, random_images, write_warmup_requests

BATCHES = ":tensorflow:serving:batching_session:processed_batch_size"
PADDING = ":tensorflow:serving:batching_session:padding_size"
RUNS = ":tensorflow:serving:batching_session:wrapped_run_count"  # TF Serving's name, no _total


def metric(name: str, labels: dict[str, str] | None = None) -> float:
    return REGISTRY.get_sample_value(name, labels or {}) or 0.0


def padding_total() -> float:
    return sum(
        s.value for m in REGISTRY.collect() if m.name == PADDING for s in m.samples if s.name.endswith("_sum")
    )


# A tiny classifier behind a server started per test -----------------------------------


@pytest.fixture(scope="module")
def base_path(tmp_path_factory) -> Path:
    """A tiny classifier with warmup requests, so loading also runs through the batching session."""
    path = tmp_path_factory.mktemp("batched") / "digits"
    export_test_model(path / "1", seed=3)
    warmup = predict_pb2.PredictRequest()
    warmup.model_spec.name = "digits"
    warmup.inputs["images"].CopyFrom(make_tensor_proto(random_images(1)))
    write_warmup_requests(path / "1", [warmup])
    return path


@pytest.fixture(scope="module")
def reference(base_path):
    signature = tf.saved_model.load(str(base_path / "1")).signatures["serving_default"]
    return lambda images: signature(images=tf.constant(images))["probabilities"].numpy()


@pytest.fixture
def batching_server(base_path, tmp_path):
    """Start a server with the given batching parameters; yield a PredictionService stub factory."""
    servers = []

    def start(parameters: str, warmup: bool = True):
        path = tmp_path / f"batching{len(servers)}.txt"
        path.write_text(parameters)
        # Warmup runs through the batching queue too: with a long batch timeout it would wait that long.
        options = ServerOptions(
            file_system_poll_wait_seconds=0,
            grpc_max_threads=64,
            enable_batching=True,
            batching_parameters_file=str(path),
            enable_model_warmup=warmup,
        )
        server, port = create_server(
            "127.0.0.1:0", build_single_model_config("digits", str(base_path)), options
        )
        server.start()
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        servers.append((server, channel))
        return prediction_service_pb2_grpc.PredictionServiceStub(channel)

    yield start
    for server, channel in servers:
        channel.close()
        server.stop(0)


def predict_call(stub, images, method="__call__", timeout=30):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "digits"
    request.inputs["images"].CopyFrom(make_tensor_proto(images))
    return getattr(stub.Predict, method)(request, timeout=timeout)


def probabilities(response) -> np.ndarray:
    return make_ndarray(response.outputs["probabilities"])


def test_concurrent_requests_run_as_batches_without_mixing_answers(batching_server, reference):
    stub = batching_server(
        "max_batch_size { value: 8 } batch_timeout_micros { value: 2000 } num_batch_threads { value: 1 }"
    )
    images = random_images(128, seed=7)
    runs_before, batches_before = metric(RUNS), metric(BATCHES + "_count")
    with futures.ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda image: probabilities(predict_call(stub, image[np.newaxis])), images))
    expected = reference(images)
    for index, answer in enumerate(answers):
        np.testing.assert_allclose(answer[0], expected[index], rtol=1e-4, atol=1e-6)
        # Distinct inputs give distinct answers, so a swapped answer could not pass the check above.
        assert not np.allclose(answer[0], expected[(index + 1) % len(images)], rtol=1e-4, atol=1e-6)
    runs = metric(RUNS) - runs_before
    assert runs == metric(BATCHES + "_count") - batches_before
    assert runs < len(images)  # batches formed: fewer session runs than requests


def test_a_full_batch_runs_as_one_session_run(batching_server, reference):
    stub = batching_server(
        "max_batch_size { value: 8 } batch_timeout_micros { value: 60000000 }", warmup=False
    )
    images = random_images(8, seed=11)
    runs_before, rows_before = metric(RUNS), metric(BATCHES + "_sum")
    with futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(lambda image: probabilities(predict_call(stub, image[np.newaxis])), images))
    np.testing.assert_allclose(np.concatenate(answers), reference(images), rtol=1e-4, atol=1e-6)
    assert metric(RUNS) - runs_before == 1  # waited for all 8, then closed on size, not on the timeout
    assert metric(BATCHES + "_sum") - rows_before == 8


def test_batches_are_padded_to_an_allowed_size(batching_server, reference):
    stub = batching_server("max_batch_size { value: 4 } allowed_batch_sizes: 2 allowed_batch_sizes: 4")
    images = random_images(3, seed=5)
    padding_before = padding_total()
    with futures.ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda image: probabilities(predict_call(stub, image[np.newaxis])), images))
    np.testing.assert_allclose(np.concatenate(answers), reference(images), rtol=1e-4, atol=1e-6)
    assert padding_total() > padding_before  # 3 rows never split into batches of 2 and 4 alone


def test_queue_limits_answer_as_tf_serving_does(batching_server, reference):
    stub = batching_server(
        "max_batch_size { value: 2 } batch_timeout_micros { value: 60000000 } "
        "max_enqueued_batches { value: 1 }",
        warmup=False,
    )
    with pytest.raises(grpc.RpcError) as too_large:
        predict_call(stub, random_images(3))
    assert too_large.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert too_large.value.details() == "Task size 3 is larger than maximum input batch size 2"

    waiting_image, filler = random_images(2, seed=9)
    waiting = predict_call(stub, waiting_image[np.newaxis], method="future")  # opens a batch of 1 that waits
    for _ in range(100):  # a pair that does not fit next to it needs a second batch: the queue is full
        try:
            predict_call(stub, random_images(2))  # runs at once while the waiting one is not queued yet
        except grpc.RpcError as full:
            assert full.code() == grpc.StatusCode.UNAVAILABLE
            assert full.details().startswith(
                "The batch scheduling queue to which this task was submitted is full"
            )
            break
    else:
        pytest.fail("the queue never filled")
    filled = predict_call(stub, filler[np.newaxis])  # completes the waiting batch
    np.testing.assert_allclose(
        probabilities(waiting.result()), reference(waiting_image[np.newaxis]), rtol=1e-4
    )
    np.testing.assert_allclose(probabilities(filled), reference(filler[np.newaxis]), rtol=1e-4)


def test_a_call_whose_deadline_passes_in_the_queue_is_counted_and_the_server_goes_on(
    batching_server, reference
):
    stub = batching_server(
        "max_batch_size { value: 4 } batch_timeout_micros { value: 60000000 }", warmup=False
    )
    status = {"model_name": "digits", "status": "DEADLINE_EXCEEDED"}
    expired_before = metric(":tensorflow:serving:request_count", status)
    with pytest.raises(grpc.RpcError) as late:
        predict_call(stub, random_images(1), timeout=0.5)  # its batch waits for 3 more rows
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    # The server's side of it: the waiting coroutine was cancelled at the deadline and counted.
    for _ in range(100):
        if metric(":tensorflow:serving:request_count", status) > expired_before:
            break
        time.sleep(0.05)
    assert metric(":tensorflow:serving:request_count", status) == expired_before + 1
    # The abandoned row still holds its place in the batch: three more calls fill it and answer.
    images = random_images(3, seed=13)
    with futures.ThreadPoolExecutor(3) as pool:
        answers = list(pool.map(lambda image: probabilities(predict_call(stub, image[np.newaxis])), images))
    np.testing.assert_allclose(np.concatenate(answers), reference(images), rtol=1e-4, atol=1e-6)


def test_large_requests_split_across_batches(batching_server, reference):
    stub = batching_server(
        "max_batch_size { value: 8 } enable_large_batch_splitting { value: true } "
        "max_execution_batch_size { value: 2 }"
    )
    images = random_images(5, seed=13)
    batches_before = metric(BATCHES + "_count")
    np.testing.assert_allclose(
        probabilities(predict_call(stub, images)), reference(images), rtol=1e-4, atol=1e-6
    )
    assert metric(BATCHES + "_count") - batches_before == 3  # 2 + 2 + 1 rows


def _per_model_server(tmp_path: Path, base_path: Path, per_model_files: dict[str, str], per_model: bool):
    """A server of one copy of the test model per entry, each with `batching_params.pbtxt` if given."""
    from serving.model_server.config import parse_model_server_config

    entries = []
    for name, parameters in per_model_files.items():
        version_dir = tmp_path / name / "1"
        shutil.copytree(base_path / "1", version_dir)
        if parameters:
            (version_dir / "batching_params.pbtxt").write_text(parameters)
        entries.append(
            f"config {{ name: '{name}' base_path: '{tmp_path / name}' model_platform: 'tensorflow' }}"
        )
    server_file = tmp_path / "server_batching.txt"
    server_file.write_text("max_batch_size { value: 32 } num_batch_threads { value: 1 }")
    options = ServerOptions(
        file_system_poll_wait_seconds=0,
        enable_batching=True,
        batching_parameters_file=str(server_file),
        enable_per_model_batching_parameters=per_model,
        enable_model_warmup=False,
        max_num_load_retries=0,
    )
    config = parse_model_server_config("model_config_list { " + " ".join(entries) + " }")
    return create_server("127.0.0.1:0", config, options)


def predict_named(stub, name: str, images: np.ndarray):
    request = predict_pb2.PredictRequest()
    request.model_spec.name = name
    request.inputs["images"].CopyFrom(make_tensor_proto(images))
    return stub.Predict(request, timeout=30)


@pytest.mark.parametrize("per_model", [True, False])
def test_per_model_batching_parameters_replace_the_servers_for_each_model(
    base_path, tmp_path, reference, per_model
):
    own = "max_batch_size { value: 2 } num_batch_threads { value: 0 }"  # its thread count is ignored
    server, port = _per_model_server(tmp_path, base_path, {"own": own, "none": ""}, per_model)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            three, forty = random_images(3, seed=21), random_images(40, seed=22)
            if per_model:  # its own file: batches of at most 2
                with pytest.raises(grpc.RpcError) as too_large:
                    predict_named(stub, "own", three)
                assert too_large.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                assert too_large.value.details() == "Task size 3 is larger than maximum input batch size 2"
                # No file: no batching, so the server's limit of 32 does not apply either.
                answer = probabilities(predict_named(stub, "none", forty))
                np.testing.assert_allclose(answer, reference(forty), rtol=1e-4, atol=1e-6)
            else:  # the server's file for every model, the models' own files unread
                answer = probabilities(predict_named(stub, "own", three))
                np.testing.assert_allclose(answer, reference(three), rtol=1e-4, atol=1e-6)
                with pytest.raises(grpc.RpcError) as too_large:
                    predict_named(stub, "none", forty)
                assert too_large.value.details() == "Task size 40 is larger than maximum input batch size 32"
            np.testing.assert_allclose(
                probabilities(predict_named(stub, "own", three[:2])),
                reference(three[:2]),
                rtol=1e-4,
                atol=1e-6,
            )
    finally:
        server.stop(0)


def test_a_misspelt_per_model_batching_file_fails_that_models_load(base_path, tmp_path):
    with pytest.raises(ModelServerError) as failed:
        _per_model_server(tmp_path, base_path, {"typo": "max_batch_sise { value: 2 }"}, per_model=True)
    assert "Invalid protobuf file" in str(failed.value)
    assert "batching_params.pbtxt" in str(failed.value)
