"""tensorflow_model_server flags whose effect no other test shows: --version, --grpc_socket_path,
--grpc_channel_arguments, --tensorflow_session_config_file, --num_request_iterations_for_warmup,
--saved_model_tags, --enable_serialization_as_tensor_content.
"""

from __future__ import annotations

import shutil

import grpc
import pytest
from tensorflow_serving.apis import (
    get_model_status_pb2,
    model_service_pb2_grpc,
    predict_pb2,
    prediction_log_pb2,
    prediction_service_pb2_grpc,
)

from serving.model_server import ServerOptions, build_single_model_config, create_server
from serving.model_server.__main__ import main
from serving.model_server.bundle import session_config
from serving.model_server.errors import InvalidArgument, ModelServerError, NotFound
from serving.model_server.manager import ModelManager
from serving.model_server.server import parse_channel_arguments
from tests.model_fixtures.keras_classifier import write_warmup_requests

OPTIONS = {"file_system_poll_wait_seconds": 0}


def test_version_prints_and_exits(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("TensorFlow ModelServer: ")


def test_grpc_socket_path_and_channel_arguments_serve(half_plus_two_models, tmp_path):
    # TF Serving's testPredictUDS and testGoodGrpcChannelArgs in one server.
    arguments = "grpc.max_connection_age_ms=2000,grpc.lb_policy_name=grpclb"
    assert parse_channel_arguments(arguments) == [
        ("grpc.max_connection_age_ms", 2000),
        ("grpc.lb_policy_name", "grpclb"),
    ]
    config = build_single_model_config("default", str(half_plus_two_models / "half_plus_two"))
    socket_path = tmp_path / "grpc.sock"
    server, _ = create_server(
        f"unix:{socket_path}", config, ServerOptions(grpc_channel_arguments=arguments, **OPTIONS)
    )
    server.start()
    try:
        with grpc.insecure_channel(f"unix:{socket_path}") as channel:
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = "default"
            response = model_service_pb2_grpc.ModelServiceStub(channel).GetModelStatus(request, timeout=30)
            assert [status.version for status in response.model_version_status] == [123]
    finally:
        server.stop(0)
    with pytest.raises(InvalidArgument, match="expected key=value"):
        parse_channel_arguments("grpc.max_connection_age_ms")


def test_session_config_file_is_read_then_parallelism_flags_applied(tmp_path):
    path = tmp_path / "session.config"
    path.write_text("allow_soft_placement: true\nintra_op_parallelism_threads: 3\n")
    config = session_config(0, 2, str(path))
    # server.cc sets both thread counts after reading the file, as here.
    assert (config.allow_soft_placement, config.intra_op_parallelism_threads) == (True, 0)
    assert config.inter_op_parallelism_threads == 2
    path.write_text("allow_soft_placement: maybe\n")
    with pytest.raises(InvalidArgument, match="Invalid protobuf file"):
        session_config(config_file=str(path))
    with pytest.raises(NotFound):
        session_config(config_file=str(tmp_path / "missing.config"))


@pytest.mark.parametrize(("iterations", "runs"), [(0, 1), (3, 3)])
def test_each_warmup_record_runs_num_request_iterations_times(
    half_plus_two_models, tmp_path, iterations, runs
):
    base_path = tmp_path / "counter"
    shutil.copytree(half_plus_two_models / "half_plus_two", base_path)
    log = prediction_log_pb2.PredictionLog()
    log.predict_log.request.model_spec.signature_name = "incr_counter"
    write_warmup_requests(base_path / "123", [log])
    options = ServerOptions(num_request_iterations_for_warmup=iterations, **OPTIONS)
    server, port = create_server("127.0.0.1:0", build_single_model_config("counter", str(base_path)), options)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "counter"
            request.model_spec.signature_name = "get_counter"
            response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
            assert list(response.outputs["count"].float_val) == [runs]
    finally:
        server.stop(0)


def test_saved_model_tags_pick_the_metagraph(half_plus_two_models):
    manager = ModelManager(ServerOptions(saved_model_tags="serve,gpu", max_num_load_retries=0, **OPTIONS))
    config = build_single_model_config("default", str(half_plus_two_models / "half_plus_two"))
    try:
        with pytest.raises(ModelServerError) as raised:
            manager.reload_config(config)
    finally:
        manager.stop()
    expected = "MetaGraphDef associated with tags 'serve,gpu' could not be found in SavedModel"
    assert f"{expected}, with available tags '[serve]'" in raised.value.message


@pytest.mark.parametrize("as_content", [False, True])
def test_serialization_as_tensor_content(half_plus_two_models, as_content):
    config = build_single_model_config("default", str(half_plus_two_models / "half_plus_two"))
    options = ServerOptions(enable_serialization_as_tensor_content=as_content, **OPTIONS)
    server, port = create_server("127.0.0.1:0", config, options)
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            request = predict_pb2.PredictRequest()
            request.model_spec.name = "default"
            request.inputs["x"].float_val.extend([1.0, 2.0])
            request.inputs["x"].dtype = 1  # DT_FLOAT
            request.inputs["x"].tensor_shape.dim.add(size=2)
            output = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=30)
            y = output.outputs["y"]
            expected = (True, []) if as_content else (False, [2.5, 3.0])
            assert (bool(y.tensor_content), list(y.float_val)) == expected
    finally:
        server.stop(0)
