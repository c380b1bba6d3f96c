"""Classify, Regress and MultiInference over gRPC (a plain TF Serving client) and REST, with
TF Serving's answers and messages; tf.Example context merging; the method-name check;
warmup records of each kind; session deadlines.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil

import grpc
import pytest
import requests
import tensorflow as tf
from tensorflow_serving.apis import (
    classification_pb2,
    inference_pb2,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
    regression_pb2,
)

from serving.model_server import ServerOptions, build_single_model_config, create_server
from serving.model_server.core import ModelServerCore
from serving.model_server.errors import ModelServerError
from serving.model_server.manager import ModelManager
from serving.model_server.run_options import run_timeout
from tests.model_fixtures.keras_classifier import write_warmup_requests

CLASSIFY = "tensorflow/serving/classify"
REGRESS = "tensorflow/serving/regress"


@pytest.fixture(scope="module")
def stub(half_plus_two_server):
    with grpc.insecure_channel(half_plus_two_server.grpc) as channel:
        yield prediction_service_pb2_grpc.PredictionServiceStub(channel)


def add_examples(model_input, *values: dict[str, float]) -> None:
    for features in values:
        example = model_input.example_list.examples.add()
        for name, value in features.items():
            example.features.feature[name].float_list.value.append(value)


def classification_request(signature: str, *examples: dict[str, float], model: str = "half_plus_two"):
    request = classification_pb2.ClassificationRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    add_examples(request.input, *examples)
    return request


def regression_request(signature: str, *examples: dict[str, float], model: str = "half_plus_two"):
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    add_examples(request.input, *examples)
    return request


def rpc_error(call, request) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call(request, timeout=30)
    return raised.value


def test_classify_scores_and_model_spec(stub):
    response = stub.Classify(classification_request("classify_x_to_y", {"x": 2.0}, {"x": 4.0}), timeout=30)
    assert [[(c.label, c.score) for c in item.classes] for item in response.result.classifications] == [
        [("", 3.0)],
        [("", 4.0)],
    ]
    assert (response.model_spec.name, response.model_spec.version.value) == ("half_plus_two", 123)
    assert response.model_spec.signature_name == "classify_x_to_y"


def first_classes(response) -> list[tuple[str, float]]:
    return [(entry.label, entry.score) for entry in response.result.classifications[0].classes]


def test_classify_with_class_labels(stub):
    response = stub.Classify(classification_request("classify_x_to_labels", {"x": 2.0}), timeout=30)
    assert first_classes(response) == [("y", 3.0), ("y2", 4.0)]
    labels_only = stub.Classify(classification_request("classify_labels_only", {"x": 2.0}), timeout=30)
    assert first_classes(labels_only) == [("y", 0.0), ("y2", 0.0)]


def regressions(stub, request) -> list[float]:
    return [regression.value for regression in stub.Regress(request, timeout=30).result.regressions]


def test_regress_and_versions(stub):
    assert regressions(stub, regression_request("regress_x_to_y", {"x": 2.0}, {"x": 4.0})) == [3.0, 4.0]
    assert regressions(stub, regression_request("regress_x_to_y2", {"x": 2.0})) == [4.0]
    request = regression_request("regress_x_to_y", {"x": 2.0}, model="versioned")
    assert stub.Regress(request, timeout=30).model_spec.version.value == 124
    request.model_spec.version_label = "stable"
    answer = stub.Regress(request, timeout=30)
    assert (answer.model_spec.version.value, answer.result.regressions[0].value) == (123, 3.0)


def test_context_features_join_every_example(stub):
    request = regression_pb2.RegressionRequest()
    request.model_spec.name = "half_plus_two"
    request.model_spec.signature_name = "regress_x_to_y"
    with_context = request.input.example_list_with_context
    with_context.context.features.feature["x"].float_list.value.append(4.0)
    with_context.examples.add()  # x from the context
    with_context.examples.add().features.feature["x2"].float_list.value.append(1.0)
    assert regressions(stub, request) == [4.0, 4.0]


@pytest.mark.parametrize(
    ("method", "request_", "code", "message"),
    [
        ("Classify", classification_pb2.ClassificationRequest(), "INVALID_ARGUMENT", "Missing ModelSpec"),
        ("Regress", regression_pb2.RegressionRequest(), "INVALID_ARGUMENT", "Missing ModelSpec"),
        ("Classify", classification_request("classify_x_to_y", model="nope"), "NOT_FOUND",
         "Servable not found for request: Latest(nope)"),
        ("Classify", classification_request("classify_x_to_y"), "INVALID_ARGUMENT", "Input is empty."),
        ("Classify", classification_request("nope", {"x": 1.0}), "INVALID_ARGUMENT",
         "No signature was found with the name: nope"),
        ("Classify", classification_request("two_inputs", {"x": 1.0}), "INVALID_ARGUMENT",
         "Expected one input Tensor."),
        ("Regress", regression_request("greet", {"x": 1.0}), "INVALID_ARGUMENT",
         "Expected one output Tensor."),
        ("Regress", regression_request("regress_x2_to_y3", {"x": 1.0}), "INVALID_ARGUMENT",
         "Expects arg[0] to be float but string is provided"),
    ],
)
def test_classify_and_regress_errors(stub, method, request_, code, message):
    error = rpc_error(getattr(stub, method), request_)
    assert (error.code().name, error.details()) == (code, message)


def test_signature_without_the_expected_keys_names_itself(stub):
    error = rpc_error(stub.Regress, regression_request("", {"x": 1.0}))  # serving_default: x -> y
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details().startswith('No regression inputs found in SignatureDef: inputs {\n  key: "x"')
    error = rpc_error(stub.Classify, classification_request("", {"x": 1.0}))
    assert error.details().startswith("No classification inputs found in SignatureDef: ")


def test_multi_inference_runs_each_task_on_one_input(stub):
    # TF Serving's own MultiInference test: regress and classify x = 2 in one call.
    request = inference_pb2.MultiInferenceRequest()
    for signature, method in (("regress_x_to_y", REGRESS), ("classify_x_to_y", CLASSIFY)):
        task = request.tasks.add(method_name=method)
        task.model_spec.name = "half_plus_two"
        task.model_spec.signature_name = signature
    add_examples(request.input, {"x": 2.0})
    response = stub.MultiInference(request, timeout=30)
    assert response.results[0].regression_result.regressions[0].value == 3.0
    assert response.results[1].classification_result.classifications[0].classes[0].score == 3.0
    assert [(r.model_spec.signature_name, r.model_spec.version.value) for r in response.results] == [
        ("regress_x_to_y", 123),
        ("classify_x_to_y", 123),
    ]


def multi_request(*tasks: tuple[str, str, str]) -> inference_pb2.MultiInferenceRequest:
    request = inference_pb2.MultiInferenceRequest()
    for model, signature, method in tasks:
        task = request.tasks.add(method_name=method)
        task.model_spec.name = model
        task.model_spec.signature_name = signature
    add_examples(request.input, {"x": 2.0})
    return request


@pytest.mark.parametrize(
    ("request_", "code", "message"),
    [
        (multi_request(), "INVALID_ARGUMENT", "ModelSpec has no name specified."),
        (multi_request(("half_plus_two", "regress_x_to_y", REGRESS),
                       ("versioned", "classify_x_to_y", CLASSIFY)),
         "INVALID_ARGUMENT", "All ModelSpecs in a MultiInferenceRequest must access the same model name."),
        (multi_request(("half_plus_two", "regress_x_to_y", REGRESS),
                       ("half_plus_two", "regress_x_to_y", REGRESS)),
         "INVALID_ARGUMENT", "Duplicate evaluation of signature: regress_x_to_y"),
        (multi_request(("half_plus_two", "nope", REGRESS)), "INVALID_ARGUMENT",
         "Requested signature not found in model graph: nope"),
        (multi_request(("half_plus_two", "", "tensorflow/serving/predict")), "UNIMPLEMENTED",
         "Unsupported signature method_name: tensorflow/serving/predict"),
    ],
)
def test_multi_inference_errors(stub, request_, code, message):
    error = rpc_error(stub.MultiInference, request_)
    assert (error.code().name, error.details()) == (code, message)


# REST ----------------------------------------------------------------------------------


def rest_post(server, verb: str, body: object, model: str = "half_plus_two") -> requests.Response:
    data = body if isinstance(body, str) else json.dumps(body)
    return requests.post(f"{server.rest}/v1/models/{model}:{verb}", data=data, timeout=30)


def test_rest_classify_and_regress_as_tf_servings_tests_call_them(half_plus_two_server):
    body = {"signature_name": "classify_x_to_y", "examples": [{"x": 2.0}]}
    classify = rest_post(half_plus_two_server, "classify", body)
    assert classify.json() == {"results": [[["", 3.0]]]}
    assert classify.text == '{\n    "results": [[["", 3.0]]\n    ]\n}'
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 2.0}]}
    regress = rest_post(half_plus_two_server, "regress", body)
    assert regress.json() == {"results": [3.0]}
    assert regress.text == '{\n    "results": [3.0]\n}'


def test_rest_classify_labels_context_and_feature_kinds(half_plus_two_server):
    labels = rest_post(half_plus_two_server, "classify",
                       {"signature_name": "classify_x_to_labels", "examples": [{"x": 2.0}, {"x": [4.0]}]})
    assert labels.json() == {"results": [[["y", 3.0], ["y2", 4.0]], [["y", 4.0], ["y2", 5.0]]]}
    context = rest_post(half_plus_two_server, "regress",
                        {"signature_name": "regress_x_to_y2", "context": {"x": 1.0},
                         "examples": [{}, {"x2": 5.0, "caption": "seaside", "image": {"b64": "aW1hZ2U="}}]})
    assert context.json() == {"results": [3.5, 3.5]}


def test_rest_regress_on_versions_and_labels(half_plus_two_server):
    base = half_plus_two_server.rest
    body = json.dumps({"signature_name": "regress_x_to_y", "examples": [{"x": 1.0}]})
    latest = requests.post(f"{base}/v1/models/versioned:regress", data=body, timeout=30)
    assert latest.json() == {"results": [3.5]}
    stable = requests.post(f"{base}/v1/models/versioned/labels/stable:regress", data=body, timeout=30)
    assert stable.json() == {"results": [2.5]}


@pytest.mark.parametrize(
    ("verb", "body", "status", "error"),
    [
        ("regress", '{"signature_name": "regress_x_to_y"}', 400,
         'JSON Value: {\n    "signature_name": "regress_x_to_y"\n} When method is classify, key '
         "'examples' is expected and was not found"),
        ("classify", '{"examples": {}}', 400,
         'JSON Value: {\n    "examples": {}\n} Expecting \'examples\' value to be an list/array'),
        ("classify", '{"examples": []}', 400,
         'JSON Value: {\n    "examples": []\n} \'examples\' value is an empty array'),
        ("classify", '{"examples": [1]}', 400, "Example must be JSON object but got JSON Number"),
        ("classify", '{"examples": [{"x": null}]}', 400,
         "Feature: x has element with unexpected JSON type: Null"),
        ("classify", '{"examples": [{"x": [[1.0]]}]}', 400,
         "Feature: x has element with unexpected JSON type: Array"),
        ("classify", '{"examples": [{"x": [1.0, "a"]}]}', 400,
         "Unexpected element type in feature: x expecting type: float"),
        ("classify", '{"examples": [{"x": 18446744073709551615}]}', 400,
         "Feature: x has uint64_t element. Only int64_t is supported."),
        ("classify", '{"examples": [{"x": {"b64": "%%"}}]}', 400, "Unable to base64 decode"),
        ("regress", '{"examples": [{"x": 1.0}]}', 400,  # api_rest.md: regress needs its signature named
         "No regression inputs found in SignatureDef: "),
        ("regress", '{"signature_name": "tensorflow/serving/regress", "examples": [{"x": 1.0}]}', 400,
         "No signature was found with the name: tensorflow/serving/regress"),
        ("classify", '{"signature_name": "classify_x_to_y", "examples": [{"x2": 1.0}]}', 400,
         "Name: <unknown>, Feature: x (data type: float) is required but could not be found."),
    ],
)
def test_rest_classify_and_regress_errors(half_plus_two_server, verb, body, status, error):
    response = rest_post(half_plus_two_server, verb, body)
    assert response.status_code == status
    assert response.json()["error"].startswith(error)


def test_integer_feature_for_a_float_feature_is_tensorflows_parse_error(half_plus_two_server):
    # {"x": 2} is an int64 feature; the graph parses x as float: the op's own message, as in TF Serving.
    body = {"signature_name": "regress_x_to_y", "examples": [{"x": 2}]}
    response = rest_post(half_plus_two_server, "regress", body)
    assert response.status_code == 400
    assert "Data types don't match. Data type: int64 but expected type: float" in response.json()["error"]


# In-process: options, warmup, deadlines -------------------------------------------------


@pytest.fixture
def start_core(half_plus_two_models, tmp_path):
    managers = []

    def start(options: ServerOptions, warmup: list | None = None) -> ModelServerCore:
        base_path = tmp_path / "model"
        shutil.copytree(half_plus_two_models / "half_plus_two", base_path)
        if warmup is not None:
            write_warmup_requests(base_path / "123", warmup)
        manager = ModelManager(options)
        managers.append(manager)
        manager.reload_config(build_single_model_config("half_plus_two", str(base_path)))
        return ModelServerCore(manager)

    yield start
    for manager in managers:
        manager.stop()


def test_signature_method_name_check(start_core):
    from serving.protos.tensorflow_serving.apis import input_pb2

    core = start_core(ServerOptions(file_system_poll_wait_seconds=0, enable_signature_method_name_check=True))
    model_input = input_pb2.Input()
    model_input.example_list.examples.add().features.feature["x"].float_list.value.append(2.0)
    with pytest.raises(ModelServerError) as raised:
        asyncio.run(core.classify("half_plus_two", model_input, signature_name="regress_x_to_y"))
    assert raised.value.message == (
        "Expected classification signature method_name to be tensorflow/serving/classify. "
        "Was: tensorflow/serving/regress"
    )
    regressed = asyncio.run(core.regress("half_plus_two", model_input, signature_name="regress_x_to_y"))
    assert regressed.result.regressions[0].value == 3.0


def warmup_log(kind: str, request) -> prediction_log_pb2.PredictionLog:
    log = prediction_log_pb2.PredictionLog()
    getattr(log, kind).request.CopyFrom(request)
    return log


def test_warmup_replays_classify_regress_and_multi_inference_records(start_core, caplog):
    caplog.set_level(logging.INFO, logger="serving.model_server.warmup")
    multi = multi_request(("half_plus_two", "regress_x_to_y", REGRESS))
    records = [
        warmup_log("classify_log", classification_request("classify_x_to_y", {"x": 1.0})),
        warmup_log("regress_log", regression_request("regress_x_to_y", {"x": 1.0})),
        warmup_log("multi_inference_log", multi),
    ]
    start_core(ServerOptions(file_system_poll_wait_seconds=0), records)
    assert "Number of warmup records read: 3." in caplog.text


def test_a_failing_classify_warmup_record_fails_the_load(start_core):
    records = [warmup_log("classify_log", classification_request("nope", {"x": 1.0}))]
    options = ServerOptions(file_system_poll_wait_seconds=0, max_num_load_retries=0)
    with pytest.raises(ModelServerError, match="No signature was found with the name: nope"):
        start_core(options, records)


def test_deadline_ends_a_session_run(half_plus_two_server):
    core = half_plus_two_server.server.core
    inputs = {"x": tf.make_tensor_proto([[1.0]])}
    with run_timeout(0.2), pytest.raises(ModelServerError) as raised:
        asyncio.run(core.predict("half_plus_two", inputs, signature_name="stuck", decode=tf.make_ndarray))
    assert (raised.value.code, raised.value.message) == (grpc.StatusCode.DEADLINE_EXCEEDED,
                                                          "Timed out waiting for notification")


def test_grpc_deadline_ends_the_session_run_and_frees_its_thread(half_plus_two_models):
    # One gRPC thread: the next call is answered only if the stuck run ended at its deadline.
    config = build_single_model_config("half_plus_two", str(half_plus_two_models / "half_plus_two"))
    options = ServerOptions(file_system_poll_wait_seconds=0, grpc_max_threads=1)
    server, port = create_server("127.0.0.1:0", config, options)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "half_plus_two"
            request.model_spec.signature_name = "stuck"
            request.inputs["x"].CopyFrom(tf.make_tensor_proto([[1.0]]))
            with pytest.raises(grpc.RpcError) as raised:
                stub.Predict(request, timeout=0.5)
            assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            assert regressions(stub, regression_request("regress_x_to_y", {"x": 2.0})) == [3.0]
    finally:
        server.stop(0)
