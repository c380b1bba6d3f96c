"""The real gateway (gunicorn) in front of the real model server, with real test-set images."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from tests.conftest import MODEL_NAMES, encode

CLASS_NAMES = {
    "mnist": [str(i) for i in range(10)],
    "fashion_mnist": ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"],
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


def test_mnist_digits_get_their_right_label(gateway_url, test_images):
    images, labels = test_images["mnist"]
    files = [("image", encode(image)) for image in images[:64]]
    body = predict(gateway_url, "mnist", files=files).json()
    predicted = np.array([p["class_index"] for p in body["predictions"]])
    assert (predicted == labels[:64]).mean() >= 0.85  # a tiny model trained for seconds


def test_raw_body_and_json_b64_give_the_same_answer(gateway_url, test_images):
    png = encode(test_images["mnist"][0][0])
    raw = predict(gateway_url, "mnist", data=png, headers={"Content-Type": "image/png"}).json()
    as_json = predict(gateway_url, "mnist", json={"instances": [{"b64": base64.b64encode(png).decode()}]}).json()
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
    assert body["versions"] == [{"version": 1, "state": "AVAILABLE", "error": ""}]
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
