"""The batching defaults `make serve` ships (serving/config/batching_parameters.txt), on the real
embedded model server started with `make serve`'s flags: a plain TF Serving client's large
Predict is split into batches of 32 and answered whole, up to the file's bound; beyond it,
INVALID_ARGUMENT.
"""

from __future__ import annotations

import json
import urllib.request
from concurrent import futures
from pathlib import Path

import grpc
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from serving import stack
from serving.model_server.batching import read_batching_options
from serving.protos.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from serving.tensors import make_ndarray, make_tensor_proto
from tests.model_fixtures.keras_classifier import export_test_model, random_images

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "serving" / "config" / "batching_parameters.txt"
MONITORING = ROOT / "serving" / "config" / "monitoring.config"
INPUT_SHAPE = (32, 32, 3)  # CIFAR-10's: 512 images make a 6 MB request
PROCESSED = ":tensorflow:serving:batching_session:processed_batch_size"


@pytest.fixture(scope="module")
def shipped_options():
    return read_batching_options(str(SHIPPED), cpu_count=2)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """(PredictionService stub, metrics URL) of the model server as `make serve` starts it."""
    base = tmp_path_factory.mktemp("defaults")
    export_test_model(base / "colour" / "1", seed=5, input_shape=INPUT_SHAPE)
    config = base / "models.config"
    config.write_text(
        f'model_config_list {{ config {{ name: "colour" base_path: "{base / "colour"}" '
        'model_platform: "tensorflow" } }\n'
    )
    port, rest_port = stack.free_port(), stack.free_port()
    process = stack.start_model_server(
        port,
        config,
        "--file_system_poll_wait_seconds=0",
        f"--rest_api_port={rest_port}",
        f"--monitoring_config_file={MONITORING}",
        *stack.batching_flags(SHIPPED),
    )
    try:
        stack.wait_for_models(f"127.0.0.1:{port}", ["colour"], process)
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            metrics_path = "/monitoring/prometheus/metrics"
            yield prediction_service_pb2_grpc.PredictionServiceStub(channel), (
                f"http://127.0.0.1:{rest_port}{metrics_path}"
            )
    finally:
        stack.stop(process)


def predict(stub, images: np.ndarray) -> np.ndarray:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "colour"
    request.inputs["images"].CopyFrom(make_tensor_proto(images))
    return make_ndarray(stub.Predict(request, timeout=60).outputs["probabilities"])


def one_by_one(stub, images: np.ndarray) -> np.ndarray:
    with futures.ThreadPoolExecutor(8) as pool:
        return np.concatenate(list(pool.map(lambda image: predict(stub, image[np.newaxis]), images)))


def processed_batch_sizes(metrics_url: str) -> dict[str, float]:
    """The batch-size histogram's cumulative bucket counts ('le' -> count) and its `_count`."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    counts = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == PROCESSED + "_bucket":
                counts[sample.labels["le"]] = sample.value
            elif sample.name == PROCESSED + "_count":
                counts["count"] = sample.value
    return counts


def test_the_shipped_file_splits_large_requests_into_batches_of_32(shipped_options):
    options = shipped_options
    assert options.enable_large_batch_splitting and options.max_execution_batch_size == 32
    assert options.max_batch_size >= 500  # the documented bound: 512
    # A request at the bound fits an empty queue, with room for other traffic's batches beside it.
    assert options.max_enqueued_batches * options.max_execution_batch_size > options.max_batch_size


@pytest.mark.parametrize("count", [64, "bound"])
def test_a_large_predict_is_answered_whole_in_batches_of_at_most_32(server, shipped_options, count):
    stub, metrics_url = server
    count = shipped_options.max_batch_size if count == "bound" else count
    images = random_images(count, seed=count, shape=INPUT_SHAPE)
    before = processed_batch_sizes(metrics_url)
    answered = predict(stub, images)
    after = processed_batch_sizes(metrics_url)
    assert answered.shape == (count, 10)
    assert after["count"] - before["count"] == -(-count // 32)  # nothing else runs on this server
    assert after["32.0"] == after["count"], json.dumps(after)  # no batch ran more than 32 images
    np.testing.assert_allclose(answered, one_by_one(stub, images), rtol=1e-4, atol=1e-6)


def test_beyond_the_bound_is_invalid_argument(server, shipped_options):
    stub, _ = server
    bound = shipped_options.max_batch_size
    with pytest.raises(grpc.RpcError) as refused:
        predict(stub, random_images(bound + 1, seed=1, shape=INPUT_SHAPE))
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == (
        f"Task size {bound + 1} is larger than maximum input batch size {bound}"
    )
