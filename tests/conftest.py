"""Session fixtures: tiny real models, the real embedded model server and the real gateway
(gunicorn) on free loopback ports, and real test-set images of each data set.
"""

from __future__ import annotations

import contextlib
import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serving import stack
from tests.gateway_stack import secured_gateway  # noqa: F401 - a gateway with bearer tokens and a log file

ROOT = Path(__file__).resolve().parent.parent
MODEL_NAMES = ("mnist", "fashion_mnist", "cifar10")
DATA_DIR = Path(os.environ.get("DATA_DIR", ROOT.parent / "shared" / "datasets"))


# What each data set's loader reads from DATA_DIR: each entry one file, or files of which one will do.
REQUIRED_FILES: dict[str, list[str | tuple[str, ...]]] = {
    "mnist": ["mnist.npz"],
    "fashion_mnist": [f"fashion-mnist/{split}-{kind}-ubyte.gz"
                      for split in ("train", "t10k") for kind in ("images-idx3", "labels-idx1")],
    "cifar10": [("cifar10.npz", "cifar-10-batches-py/test_batch")],
}


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return DATA_DIR


def require_data(data_dir: Path, name: str) -> None:
    def present(need: str | tuple[str, ...]) -> bool:
        return any((data_dir / file).exists() for file in ((need,) if isinstance(need, str) else need))

    missing = [need for need in REQUIRED_FILES[name] if not present(need)]
    if missing:
        pytest.skip(f"{name} files missing from {data_dir}: {missing}")


def encode(array: np.ndarray, image_format: str = "PNG", **options) -> bytes:
    """A uint8 [H, W, C] array as encoded image bytes."""
    image = Image.fromarray(array.squeeze(-1) if array.shape[-1] == 1 else array)
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def send_json(handler, status: int, body: bytes) -> None:
    """Answer an http.server request handler's request with a JSON body."""
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


@pytest.fixture(scope="session")
def test_images():
    """name -> (uint8 images [N,H,W,C], labels [N]): the first images of each real test set."""
    from training.datasets import load_data

    if not DATA_DIR.is_dir():
        pytest.skip(f"DATA_DIR={DATA_DIR} does not exist")
    images = {}
    for name in MODEL_NAMES:
        _, (x_test, y_test) = load_data(name, DATA_DIR)
        images[name] = (x_test[:200], y_test[:200])
    return images


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory, test_images):
    """Tiny models of the three data sets, trained in seconds, exported as version 1."""
    from training.pipeline import train_and_export

    directory = tmp_path_factory.mktemp("models")
    for name in MODEL_NAMES:
        train_and_export(name, profile="tiny", models_dir=directory, data_dir=DATA_DIR, limit=4000, epochs=2,
                         verbose=0)
    return directory


@pytest.fixture(scope="session")
def model_config_file(models_dir):
    entries = "".join(
        f'  config {{ name: "{name}" base_path: "{models_dir / name}" model_platform: "tensorflow" }}\n'
        for name in MODEL_NAMES
    )
    path = models_dir / "models.config"
    path.write_text(f"model_config_list {{\n{entries}}}\n")
    return path


@pytest.fixture(scope="session")
def model_server(model_config_file):
    """host:port of the real embedded model server, started with TF Serving's flags and the
    batching that `make serve` runs it with."""
    port = stack.free_port()
    process = stack.start_model_server(
        port, model_config_file, "--file_system_poll_wait_seconds=1",
        *stack.batching_flags(ROOT / "serving" / "config" / "batching_parameters.txt"),
    )
    try:
        stack.wait_for_models(f"127.0.0.1:{port}", list(MODEL_NAMES), process)
        yield f"127.0.0.1:{port}"
    finally:
        stack.stop(process)


@contextlib.contextmanager
def running_gateway(model_server: str, models_dir: Path, env: dict[str, str]):
    """A real gateway (gunicorn) with these settings in front of the model server; yields its URL."""
    port = stack.free_port()
    process = stack.start_gateway(port, model_server, models_dir, env=env)
    try:
        stack.wait_for_http(f"http://127.0.0.1:{port}/readyz", process)
        yield f"http://127.0.0.1:{port}"
    finally:
        stack.stop(process)


@pytest.fixture(scope="session")
def gateway_url(model_server, models_dir):
    """Base URL of the real gateway (gunicorn) in front of the model server."""
    with running_gateway(model_server, models_dir, {"GATEWAY_WORKERS": "2"}) as url:
        yield url


@pytest.fixture(scope="session")
def exported_models(models_dir):
    """name -> the exported SavedModel, loaded once for every test that calls it directly."""
    import tensorflow as tf

    return {name: tf.saved_model.load(str(models_dir / name / "1")) for name in MODEL_NAMES}


def signature_output(exported_models, signature_name: str, output_key: str):
    """name -> callable(float32 batch) -> `output_key` of the SavedModel's `signature_name`."""
    import tensorflow as tf

    def call(name):
        signature = exported_models[name].signatures[signature_name]
        return lambda batch: signature(images=tf.constant(batch))[output_key].numpy()

    return {name: call(name) for name in MODEL_NAMES}


@pytest.fixture(scope="session")
def direct_model(exported_models):
    """name -> callable(float32 batch) -> probabilities, straight from the exported SavedModel."""
    return signature_output(exported_models, "serving_default", "probabilities")


@pytest.fixture(scope="session")
def half_plus_two_models(tmp_path_factory):
    """TF1-style SavedModels like TF Serving's test models (tests/model_fixtures/half_plus_two.py):
    `half_plus_two` (version 123: y = x/2 + 2) and `versioned` (123: x/2 + 2, 124: x/2 + 3)."""
    from tests.model_fixtures.half_plus_two import export_half_plus_two

    directory = tmp_path_factory.mktemp("half_plus_two")
    export_half_plus_two(directory / "half_plus_two" / "123")
    export_half_plus_two(directory / "versioned" / "123")
    export_half_plus_two(directory / "versioned" / "124", bias=3.0)
    return directory


@pytest.fixture(scope="session")
def half_plus_two_server(half_plus_two_models):
    """The embedded model server, in-process, serving them with gRPC and REST on free loopback
    ports; `versioned` serves both versions, labelled stable (123) and canary (124)."""
    from types import SimpleNamespace

    from serving.model_server import ServerOptions, create_server, parse_model_server_config

    config = parse_model_server_config(f"""model_config_list {{
      config {{ name: "half_plus_two" base_path: "{half_plus_two_models / 'half_plus_two'}"
               model_platform: "tensorflow" }}
      config {{ name: "versioned" base_path: "{half_plus_two_models / 'versioned'}"
               model_platform: "tensorflow"
               model_version_policy {{ all {{}} }}
               version_labels {{ key: "stable" value: 123 }} version_labels {{ key: "canary" value: 124 }} }}
    }}""")
    # Labels in a first config name versions not loaded yet: TF Serving needs this flag too.
    options = ServerOptions(file_system_poll_wait_seconds=0, allow_version_labels_for_unavailable_models=True)
    server, grpc_port = create_server("127.0.0.1:0", config, options)
    rest_port = server.add_rest_api("127.0.0.1:0")
    server.start()
    yield SimpleNamespace(server=server, grpc=f"127.0.0.1:{grpc_port}", rest=f"http://127.0.0.1:{rest_port}")
    server.stop(0)
