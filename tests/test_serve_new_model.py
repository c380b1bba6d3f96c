"""A model exported into the folder a running `make serve` stack serves is served without a restart:
registered (serving/model_config.py), it is listed and answers within the issue's minute, taken out
it goes, and a stack started afterwards serves it from the start. Real stack, real models."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import requests
from PIL import Image

from serving import stack
from serving.model_config import register_model, unregister_model
from tests.gateway_stack import publish_version

LETTERS = "abcdefghij"
WITHIN = 60  # seconds: the "within a minute"


class ServingStack:
    """`python -m serving.stack` (what `make serve` runs) on free loopback ports, its log in a file."""

    def __init__(self, models_dir: Path, log_file: Path):
        self.models_dir, self.log_file = models_dir, log_file
        self.process: subprocess.Popen | None = None

    def start(self) -> dict:
        self.grpc_port, self.http_port = stack.free_port(), stack.free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        environment = {k: v for k, v in os.environ.items() if k not in ("MODELS", "MODEL_CONFIG_FILE")}
        with open(self.log_file, "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "serving.stack", f"--models-dir={self.models_dir}",
                 f"--grpc-port={self.grpc_port}", f"--http-port={self.http_port}", "--rest-port=0",
                 "--host=127.0.0.1", "--batching-parameters-file="],
                cwd=stack.ROOT, env={**environment, "GATEWAY_WORKERS": "1"}, stdout=log,
                stderr=subprocess.STDOUT)
        return stack.wait_for_http(f"{self.url}/readyz", self.process, timeout=180)

    def stop(self) -> None:
        if self.process is not None:
            stack.stop(self.process, grace=30)


def write_labels(version_dir: Path, labels: str) -> None:
    (version_dir / "assets").mkdir(exist_ok=True)
    (version_dir / "assets" / "labels.txt").write_text("".join(f"{label}\n" for label in labels))


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    """One tiny model, `digits`, exported and registered; `letters` (the same network, other labels)
    waits outside the folder to be exported into it."""
    from tests.model_fixtures.keras_classifier import export_test_model

    directory = tmp_path_factory.mktemp("models")
    version = Path(export_test_model(directory / "digits" / "1"))
    write_labels(version, "0123456789")
    (version / "assets" / "preprocessing.json").write_text(
        json.dumps({"mode": "resize", "input_key": "images", "output_key": "probabilities"}))
    register_model(directory, "digits")
    spare = tmp_path_factory.mktemp("spare") / "1"
    shutil.copytree(version, spare)
    write_labels(spare, LETTERS)
    return directory, spare


@pytest.fixture(scope="module")
def serving_stack(models_dir, tmp_path_factory):
    running = ServingStack(models_dir[0], tmp_path_factory.mktemp("logs") / "stack.log")
    try:
        assert running.start() == {"ready": True, "models": {"digits": "AVAILABLE"}}
        yield running
    finally:
        running.stop()


def digit_png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def predict(url: str, name: str) -> requests.Response:
    return requests.post(f"{url}/v1/models/{name}:predict", files={"image": digit_png()}, timeout=30)


def listed(url: str) -> dict[str, str]:
    models = requests.get(f"{url}/v1/models", timeout=30).json()["models"]
    return {model["name"]: model["state"] for model in models}


def wait_until(condition, what: str, answers: list) -> float:
    """Seconds until `condition()` holds, polled; fails after WITHIN seconds."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > WITHIN:
            pytest.fail(f"{what} not within {WITHIN}s; answers seen: {answers[-5:]}")
        time.sleep(0.2)
    return time.monotonic() - started


def test_a_model_exported_while_serving_is_served_and_goes_when_taken_out(models_dir, serving_stack):
    directory, spare = models_dir
    url = serving_stack.url
    (directory / "letters").mkdir()
    publish_version(spare, directory / "letters", 1)  # as the export writes a version: one rename
    register_model(directory, "letters")
    answers: list[tuple[int, str | None]] = []

    def answers_as_letters() -> bool:
        response = predict(url, "letters")
        answers.append((response.status_code, response.json().get("code")))
        return response.status_code == 200 and response.json()["predictions"][0]["label"] in LETTERS

    seconds = wait_until(answers_as_letters, "letters answering", answers)
    print(f"letters answered {seconds:.1f}s after its registration")
    # Until then: unknown to the gateway (404) or not loaded yet (503 model_loading), never a 500.
    assert set(answers[:-1]) <= {(404, "model_not_found"), (503, "model_loading")}, answers
    # Each gateway worker re-reads the config on its own (METADATA_TTL_SECONDS): the listing may come from
    # one that has not yet, for a moment.
    wait_until(lambda: listed(url) == {"digits": "AVAILABLE", "letters": "AVAILABLE"}, "letters listed",
               answers)
    assert predict(url, "digits").json()["predictions"][0]["label"] in "0123456789"

    unregister_model(directory, "letters")
    wait_until(lambda: predict(url, "letters").status_code == 404, "letters gone", answers)
    wait_until(lambda: listed(url) == {"digits": "AVAILABLE"}, "letters no longer listed", answers)
    assert predict(url, "digits").status_code == 200
    assert (directory / "letters" / "1" / "saved_model.pb").is_file()  # taken out of service, not deleted


def test_a_model_the_gateway_serves_before_the_model_server_loads_it_answers_503(models_dir, serving_stack,
                                                                               tmp_path):
    """The gateway can read the config a moment before the model server has loaded what it adds:
    that model answers 503 model_loading (a client retries it), not 404 or 500."""
    from serving.gateway import create_app

    config = tmp_path / "models.config"
    config.write_text('model_config_list { config { name: "digits" } config { name: "pending" } }')
    app = create_app({"MODEL_SERVER": f"127.0.0.1:{serving_stack.grpc_port}",
                      "MODEL_BASE_PATH": str(models_dir[0]), "MODEL_CONFIG_FILE": str(config)})
    client = app.test_client()

    def post(name):
        return client.post(f"/v1/models/{name}:predict", data=digit_png(), content_type="image/png")

    answer = post("pending")
    assert (answer.status_code, answer.get_json()["code"]) == (503, "model_loading")
    assert "model 'pending' is not loaded yet" in answer.get_json()["error"]
    models = {model["name"]: model for model in client.get("/v1/models").get_json()["models"]}
    assert models["digits"]["state"] == "AVAILABLE"
    assert models["pending"]["state"] == "UNAVAILABLE" and "not loaded yet" in models["pending"]["error"]
    assert post("digits").status_code == 200


def test_make_serve_started_afterwards_serves_the_registered_model(models_dir, serving_stack):
    directory, spare = models_dir
    if not (directory / "letters").exists():
        (directory / "letters").mkdir()
        publish_version(spare, directory / "letters", 1)
    register_model(directory, "letters")
    serving_stack.stop()
    ready = serving_stack.start()  # a fresh stack on the same folder
    assert ready == {"ready": True, "models": {"digits": "AVAILABLE", "letters": "AVAILABLE"}}
    assert predict(serving_stack.url, "letters").json()["predictions"][0]["label"] in LETTERS
