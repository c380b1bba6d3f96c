"""The real gateway (gunicorn) in front of the real model server, with real test-set images."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from serving import stack
from tests.conftest import MODEL_NAMES, encode

CLASS_NAMES = {
    "mnist": [str(i) for i in range(10)],
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                      "Bag", "Ankle boot"],
    "cifar10": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"],
}


def predict(url, name, files=None, **kwargs):
    return requests.post(f"{url}/v1/models/{name}:predict", files=files, timeout=30, **kwargs)


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("image_format", ["PNG", "JPEG"])
def test_predictions_match_the_exported_model(gateway_url, test_images, direct_model, name, image_format):
    images, _ = test_images[name]
    payloads = [encode(image, image_format, **({"quality": 95} if image_format == "JPEG" else {}))
                for image in images[:8]]
    response = predict(gateway_url, name, files=[("image", p) for p in payloads], params={"top_k": 3})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == name and body["version"] == 1
    assert len(body["predictions"]) == 8
    if image_format == "PNG":  # lossless and already the model's size: same tensor, same answer
        expected = direct_model[name](images[:8].astype(np.float32) / 255)
        for prediction, probabilities in zip(body["predictions"], expected, strict=True):
            assert prediction["class_index"] == int(np.argmax(probabilities))
            assert prediction["probability"] == pytest.approx(float(probabilities.max()), abs=1e-5)
    for prediction in body["predictions"]:
        assert prediction["label"] == CLASS_NAMES[name][prediction["class_index"]]
        assert len(prediction["top_k"]) == 3
        probabilities = [entry["probability"] for entry in prediction["top_k"]]
        assert probabilities == sorted(probabilities, reverse=True)
        assert prediction["top_k"][0]["label"] == prediction["label"]


@pytest.mark.parametrize("count", [33, 64])
def test_more_images_than_one_predict_call_holds_are_answered_in_order(gateway_url, test_images, direct_model,
                                                                      count):
    """The gateway sends the request as calls of MAX_IMAGES_PER_CALL (32) at most and joins
    their answers in order."""
    images, _ = test_images["cifar10"]
    response = predict(gateway_url, "cifar10", files=[("image", encode(image)) for image in images[:count]])
    assert response.status_code == 200, response.text
    expected = direct_model["cifar10"](images[:count].astype(np.float32) / 255)
    predictions = response.json()["predictions"]
    assert len(predictions) == count
    for prediction, probabilities in zip(predictions, expected, strict=True):
        assert prediction["class_index"] == int(np.argmax(probabilities))
        assert prediction["probability"] == pytest.approx(float(probabilities.max()), abs=1e-5)


def test_mnist_digits_get_their_right_label(gateway_url, test_images):
    images, labels = test_images["mnist"]
    files = [("image", encode(image)) for image in images[:64]]
    body = predict(gateway_url, "mnist", files=files).json()
    predicted = np.array([p["class_index"] for p in body["predictions"]])
    assert (predicted == labels[:64]).mean() >= 0.85  # a tiny model trained for seconds


def test_raw_body_and_json_b64_give_the_same_answer(gateway_url, test_images):
    png = encode(test_images["mnist"][0][0])
    raw = predict(gateway_url, "mnist", data=png, headers={"Content-Type": "image/png"}).json()
    instances = {"instances": [{"b64": base64.b64encode(png).decode()}]}
    as_json = predict(gateway_url, "mnist", json=instances).json()
    multipart = predict(gateway_url, "mnist", files={"image": png}).json()
    assert raw == as_json == multipart


def test_concurrent_requests_get_their_own_answers(gateway_url, test_images):
    images, _ = test_images["fashion_mnist"]
    payloads = [encode(image) for image in images[:32]]

    def ask(payload: bytes) -> tuple[str, list[float]]:
        answer = predict(gateway_url, "fashion_mnist", files={"image": payload}, params={"top_k": 10})
        prediction = answer.json()["predictions"][0]
        by_class = sorted(prediction["top_k"], key=lambda entry: entry["class_index"])
        return prediction["label"], [entry["probability"] for entry in by_class]

    alone = [ask(p) for p in payloads]
    with ThreadPoolExecutor(16) as pool:
        together = list(pool.map(ask, payloads * 3))
    # Concurrent requests share Predict calls, and a batch's kernels may round the last float
    # bits differently from a batch of one: the same labels, probabilities within float32 noise.
    assert [label for label, _ in together] == [label for label, _ in alone * 3]
    np.testing.assert_allclose([p for _, p in together], [p for _, p in alone * 3], rtol=1e-4, atol=1e-6)


def test_specific_version_and_unknown_version(gateway_url, test_images):
    png = encode(test_images["mnist"][0][0])
    assert predict(gateway_url, "mnist", files={"image": png}, params={"version": 1}).json()["version"] == 1
    response = predict(gateway_url, "mnist", files={"image": png}, params={"version": 99})
    assert response.status_code == 404
    assert response.json()["code"] == "model_not_found"


@pytest.mark.parametrize(
    ("name", "kwargs", "status", "code"),
    [
        ("nope", {"files": {"image": b"x"}}, 404, "model_not_found"),
        ("mnist", {"files": {"image": b"not an image"}}, 400, "invalid_image"),
        ("mnist", {"files": {"image": b""}}, 400, "empty_image"),
        ("mnist", {"files": {"picture": b"x"}}, 400, "missing_image"),
        ("mnist", {"data": b"abc", "headers": {"Content-Type": "text/plain"}}, 415, "unsupported_media_type"),
        ("mnist", {"json": {"instances": [{"b64": "***"}]}}, 400, "invalid_base64"),
        ("mnist", {"json": {"images": []}}, 400, "invalid_json"),
        ("mnist", {"data": b"{", "headers": {"Content-Type": "application/json"}}, 400, "invalid_json"),
        ("mnist", {"files": {"image": b"x"}, "params": {"top_k": "0"}}, 400, "invalid_top_k"),
        ("mnist", {"files": {"image": b"x"}, "params": {"top_k": "abc"}}, 400, "invalid_top_k"),
        ("mnist", {"files": {"image": b"x"}, "params": {"version": "-1"}}, 400, "invalid_version"),
        ("mnist", {}, 400, "missing_image"),
    ],
)
def test_bad_requests_get_a_clear_json_error(gateway_url, name, kwargs, status, code):
    response = predict(gateway_url, name, **kwargs)
    assert response.status_code == status, response.text
    body = response.json()
    assert body["code"] == code
    assert isinstance(body["error"], str) and body["error"]


def test_unknown_path_and_method_answer_json(gateway_url):
    assert requests.get(f"{gateway_url}/nope", timeout=5).json()["code"] == "not_found"
    response = requests.delete(f"{gateway_url}/v1/models", timeout=5)
    assert response.status_code == 405 and response.json()["code"] == "method_not_allowed"


def test_models_list_metadata_from_the_model_server(gateway_url):
    body = requests.get(f"{gateway_url}/v1/models", timeout=10).json()
    models = {model["name"]: model for model in body["models"]}
    assert set(models) == set(MODEL_NAMES)
    assert models["mnist"]["input"]["shape"] == [28, 28, 1]
    assert models["cifar10"]["input"]["shape"] == [32, 32, 3]
    for name in MODEL_NAMES:
        assert models[name]["classes"] == CLASS_NAMES[name]


def test_one_model_with_status(gateway_url):
    body = requests.get(f"{gateway_url}/v1/models/cifar10", timeout=10).json()
    assert body["versions"] == [{"version": 1, "state": "AVAILABLE", "error": "",
                                 "out_of_distribution": body["out_of_distribution"]}]
    assert body["version"] == 1 and body["classes"] == CLASS_NAMES["cifar10"]
    assert requests.get(f"{gateway_url}/v1/models/..%2Fetc", timeout=10).status_code == 404


def test_health_ready_and_metrics(gateway_url):
    assert requests.get(f"{gateway_url}/healthz", timeout=5).json() == {"status": "ok"}
    ready = requests.get(f"{gateway_url}/readyz", timeout=5)
    assert ready.status_code == 200
    assert ready.json() == {"ready": True, "models": {name: "AVAILABLE" for name in MODEL_NAMES}}
    metrics = requests.get(f"{gateway_url}/metrics", timeout=5).text
    assert "pixelgate_requests_total" in metrics


def test_request_id_is_returned(gateway_url):
    response = requests.get(f"{gateway_url}/healthz", headers={"X-Request-ID": "abc-123"}, timeout=5)
    assert response.headers["X-Request-ID"] == "abc-123"
    assert json.loads(response.text) == {"status": "ok"}


def test_a_model_with_unusable_preprocessing_assets_is_unavailable_not_a_500(
        model_server, models_dir, tmp_path, test_images):
    """A version whose preprocessing.json names no known mode: the gateway lists it UNAVAILABLE,
    answers its predictions 503 with a JSON error, is not ready, and serves the other models."""
    from tests.gateway_stack import GatewayProcess

    base = tmp_path / "models"
    for name in MODEL_NAMES:
        shutil.copytree(models_dir / name, base / name)
    spec_path = base / "mnist" / "1" / "assets" / "preprocessing.json"
    spec_path.write_text(json.dumps({**json.loads(spec_path.read_text()), "mode": "no-such-mode"}))
    gateway = GatewayProcess(model_server, base, tmp_path / "gateway.log")
    gateway.start()
    try:
        listed = requests.get(f"{gateway.url}/v1/models", timeout=30)
        assert listed.status_code == 200
        states = {entry["name"]: entry for entry in listed.json()["models"]}
        assert states["mnist"]["state"] == "UNAVAILABLE" and "preprocessing.json" in states["mnist"]["error"]
        assert {states[name]["state"] for name in ("fashion_mnist", "cifar10")} == {"AVAILABLE"}
        answer = predict(gateway.url, "mnist", files={"image": encode(test_images["mnist"][0][0])})
        assert (answer.status_code, answer.json()["code"]) == (503, "model_misconfigured")
        assert "no-such-mode" in answer.json()["error"]
        ready = requests.get(f"{gateway.url}/readyz", timeout=30)
        assert ready.status_code == 503 and ready.json()["models"]["mnist"].startswith("UNAVAILABLE: ")
        other = predict(gateway.url, "cifar10", files={"image": encode(test_images["cifar10"][0][0])})
        assert other.status_code == 200
    finally:
        gateway.stop()


@contextlib.contextmanager
def serving_stack(*flags: str):
    """`python -m serving.stack` (make serve) with these flags; yields /readyz's answer and the URL."""
    grpc_port, http_port = stack.free_port(), stack.free_port()
    environment = {k: v for k, v in os.environ.items() if k not in ("MODELS", "MODEL_CONFIG_FILE")}
    process = subprocess.Popen(
        [sys.executable, "-m", "serving.stack", *flags, f"--grpc-port={grpc_port}",
         f"--http-port={http_port}", "--rest-port=0", "--host=127.0.0.1"],
        cwd=stack.ROOT, env=environment, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{http_port}"
        yield stack.wait_for_http(f"{url}/readyz", process, timeout=120), url
    finally:
        stack.stop(process, grace=30)


def test_the_stack_serves_the_models_its_config_lists(models_dir, tmp_path):
    """A config of one model over a folder of three: the gateway serves that one and is ready,
    instead of waiting for models nobody loads."""
    config = tmp_path / "one.config"
    config.write_text(f'model_config_list {{ config {{ name: "mnist" base_path: "{models_dir / "mnist"}" '
                      'model_platform: "tensorflow" } }\n')
    with serving_stack(f"--model-config-file={config}", f"--models-dir={models_dir}") as (ready, url):
        assert ready == {"ready": True, "models": {"mnist": "AVAILABLE"}}
        listed = requests.get(f"{url}/v1/models", timeout=30).json()["models"]
        assert [entry["name"] for entry in listed] == ["mnist"]


def test_the_stack_says_which_setting_to_change_when_its_port_is_taken(models_dir, tmp_path):
    (tmp_path / "mnist").symlink_to(models_dir / "mnist", target_is_directory=True)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        finished = subprocess.run(
            [sys.executable, "-m", "serving.stack", f"--models-dir={tmp_path}",
             f"--grpc-port={stack.free_port()}", f"--http-port={taken.getsockname()[1]}", "--rest-port=0",
             "--host=127.0.0.1"],
            cwd=stack.ROOT, capture_output=True, text=True, timeout=180,
        )
    assert finished.returncode == 1
    assert "GATEWAY_PORT" in finished.stderr and "Traceback" not in finished.stderr


def test_the_stack_loads_the_models_from_models_dir_without_a_config(models_dir, tmp_path):
    """--models-dir alone: the model server loads the models there too, not the config's models/."""
    (tmp_path / "cifar10").symlink_to(models_dir / "cifar10", target_is_directory=True)
    with serving_stack(f"--models-dir={tmp_path}") as (ready, url):
        assert ready == {"ready": True, "models": {"cifar10": "AVAILABLE"}}
        status = requests.get(f"{url}/v1/models/cifar10", timeout=30).json()
        assert [v["state"] for v in status["versions"]] == ["AVAILABLE"]
