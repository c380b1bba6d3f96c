"""The real embedded model server for the Open Inference Protocol tests, and a way to run the
real clients' scripts in .venv-oip (make oip-clients) and read back what they saw.

`digits`: two versions of the tiny Keras classifier (tests/model_fixtures), both served
(version policy `all`, version 1 labelled `stable`), each with its class names in
assets/labels.txt; batching on, with the parameters `make serve` uses, so v2 requests take the
batching path Predict takes.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
CLIENT_PYTHON = ROOT / ".venv-oip" / "bin" / "python"
MODEL = "digits"
LABELS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


@pytest.fixture(scope="session")
def oip_server(tmp_path_factory):
    """The embedded model server in-process, gRPC and REST on free loopback ports."""
    from serving.model_server import ServerOptions, create_server, parse_model_server_config
    from tests.model_fixtures.keras_classifier import export_test_model

    base = tmp_path_factory.mktemp("oip") / MODEL
    for version in (1, 2):
        export_dir = Path(export_test_model(base / str(version), seed=version))
        (export_dir / "assets").mkdir(exist_ok=True)
        (export_dir / "assets" / "labels.txt").write_text("".join(f"{label}\n" for label in LABELS))
    config = parse_model_server_config(f"""model_config_list {{
      config {{ name: "{MODEL}" base_path: "{base}" model_platform: "tensorflow"
               model_version_policy {{ all {{}} }} version_labels {{ key: "stable" value: 1 }} }}
    }}""")
    options = ServerOptions(
        file_system_poll_wait_seconds=0,
        allow_version_labels_for_unavailable_models=True,  # the label names a version loaded below
        enable_batching=True,
        batching_parameters_file=str(ROOT / "serving" / "config" / "batching_parameters.txt"),
    )
    server, grpc_port = create_server("127.0.0.1:0", config, options)
    rest_port = server.add_rest_api("127.0.0.1:0")
    server.start()
    # rest: a base URL (KServe's client, requests); url: host:port (tritonclient's HTTP client)
    yield SimpleNamespace(
        server=server,
        grpc=f"127.0.0.1:{grpc_port}",
        rest=f"http://127.0.0.1:{rest_port}",
        url=f"127.0.0.1:{rest_port}",
    )
    server.stop(0)


def images(count: int, seed: int = 0) -> np.ndarray:
    """A float32 batch the model takes: [count, 28, 28, 1], values in [0, 1]."""
    return np.random.default_rng(seed).random((count, 28, 28, 1), dtype=np.float32)


def tf_serving_predict(grpc_target: str, batch: np.ndarray, version: int | None = None) -> np.ndarray:
    """The same batch through TF Serving's Predict on the same server: what v2 must equal."""
    import grpc

    from serving import tensors
    from serving.protos.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    if version is not None:
        request.model_spec.version.value = version
    request.inputs["images"].CopyFrom(tensors.make_tensor_proto(batch))
    with grpc.insecure_channel(grpc_target) as channel:
        response = prediction_service_pb2_grpc.PredictionServiceStub(channel).Predict(request, timeout=60)
    return tensors.make_ndarray(response.outputs["probabilities"])


def run_client(script: str, *arguments: str, stdin: object = None) -> dict:
    """Run tests/oip_clients/<script> in .venv-oip; its stdout is one JSON document."""
    if not CLIENT_PYTHON.exists():
        pytest.fail(f"{CLIENT_PYTHON} is missing: run `make oip-clients`")
    env = {key: value for key, value in os.environ.items() if not key.startswith("PYTHON")}
    completed = subprocess.run(
        [str(CLIENT_PYTHON), str(Path(__file__).parent / script), *arguments],
        input=json.dumps(stdin),
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    if completed.returncode != 0:
        pytest.fail(f"{script} failed ({completed.returncode}):\n{completed.stderr[-4000:]}")
    return json.loads(completed.stdout)
