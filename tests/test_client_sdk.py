"""The Python SDK's `Client` against the live test stack: every kind of image input, batches,
top-k, versions, metadata, health, the debug image, out-of-distribution flags, explanations,
and the errors the gateway answers.
"""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
from PIL import Image
from pixelgate import Client, Health, ModelDetail, PixelgateError, PredictResult
from pixelgate.cli import main as cli_main

from tests.conftest import encode, running_gateway

TOKEN = "sdk-test-token"


@pytest.fixture(scope="module")
def token_gateway(model_server, models_dir):
    """A real gateway that wants `Authorization: Bearer sdk-test-token` (health stays open)."""
    with running_gateway(model_server, models_dir, {"GATEWAY_WORKERS": "1", "GATEWAY_TOKENS": TOKEN}) as url:
        yield url


def test_predict_accepts_path_bytes_file_pil_and_arrays(gateway_url, test_images, tmp_path):
    image = test_images["mnist"][0][0]  # uint8 [28, 28, 1]
    path = tmp_path / "digit.png"
    path.write_bytes(encode(image))
    with Client(gateway_url) as client, path.open("rb") as file:
        results = [
            client.predict(path, model="mnist"),
            client.predict(str(path), model="mnist"),
            client.predict(path.read_bytes(), model="mnist"),
            client.predict(bytearray(path.read_bytes()), model="mnist"),
            client.predict(io.BytesIO(path.read_bytes()), model="mnist"),
            client.predict(file, model="mnist"),
            client.predict(Image.fromarray(image.squeeze(-1)), model="mnist"),
            client.predict(image.squeeze(-1), model="mnist"),
            client.predict(image, model="mnist"),  # [H, W, 1]
            client.predict(image.astype(np.float32) / 255, model="mnist"),  # floats in [0, 1]
        ]
    assert all(isinstance(r, PredictResult) and len(r.predictions) == 1 for r in results)
    answers = {(r.predictions[0].label, round(r.predictions[0].probability, 4)) for r in results}
    assert len(answers) == 1, answers


def test_a_list_is_one_batch_request_in_order(gateway_url, test_images):
    images, labels = test_images["cifar10"]
    with Client(gateway_url) as client:
        batch = client.predict([encode(image) for image in images[:4]], model="cifar10", top_k=5)
        singles = [
            client.predict(encode(image), model="cifar10").predictions[0].label for image in images[:4]
        ]
    assert batch.model == "cifar10" and batch.version == 1
    assert [p.label for p in batch.predictions] == singles
    for prediction in batch.predictions:
        assert len(prediction.top_k) == 5 and prediction.top_k[0].label == prediction.label
        probabilities = [score.probability for score in prediction.top_k]
        assert probabilities == sorted(probabilities, reverse=True)


def test_version_and_label_selection(gateway_url, test_images):
    image = encode(test_images["mnist"][0][0])
    with Client(gateway_url) as client:
        assert client.predict(image, model="mnist", version=1).version == 1
        with pytest.raises(PixelgateError) as raised:
            client.predict(image, model="mnist", version=99)
        assert raised.value.status == 404
        with pytest.raises(ValueError, match="either"):
            client.predict(image, model="mnist", version=1, label="stable")


def test_models_model_health_and_ready(gateway_url):
    with Client(gateway_url) as client:
        models = {m.name: m for m in client.models()}
        detail = client.model("mnist")
        health = client.health()
        assert client.ready() is True
    assert set(models) == {"mnist", "fashion_mnist", "cifar10"}
    assert models["fashion_mnist"].classes[0] == "T-shirt/top"
    assert models["cifar10"].input_shape == [32, 32, 3] and models["mnist"].input_shape == [28, 28, 1]
    assert isinstance(detail, ModelDetail) and detail.state == "AVAILABLE"
    assert [(v.version, v.state) for v in detail.versions] == [(1, "AVAILABLE")]
    assert detail.classes == [str(digit) for digit in range(10)]
    assert health == Health(ready=True, models={name: "AVAILABLE" for name in models})


def test_debug_returns_the_image_the_model_saw_when_the_gateway_supports_it(gateway_url, test_images):
    """The contract: `debug=true` adds "preprocessed" (base64 PNG of the model input) per image."""
    with Client(gateway_url) as client:
        result = client.predict(
            [encode(test_images["mnist"][0][0]), encode(test_images["mnist"][0][1])],
            model="mnist",
            debug=True,
        )
        plain = client.predict(encode(test_images["mnist"][0][0]), model="mnist")
    assert plain.predictions[0].preprocessed is None
    seen = [p.preprocessed for p in result.predictions]
    if all(image is None for image in seen):
        pytest.skip("this gateway does not return preprocessed images yet (debug=true)")
    for image in seen:
        assert image is not None and Image.open(io.BytesIO(image)).size == (28, 28)


def foreign_digit_inputs() -> list[bytes]:
    """Uploads that are no digit: a blank frame and uniform noise (which the digit normalization
    reduces to a nearly empty frame, out of distribution by definition)."""
    noise = np.random.default_rng(31).integers(0, 256, (28, 28, 1), dtype=np.uint8)
    return [encode(np.zeros((28, 28, 1), np.uint8)), encode(noise)]


def test_every_answer_says_whether_the_image_looks_like_the_training_data(gateway_url, test_images):
    images, _ = test_images["mnist"]
    with Client(gateway_url) as client:
        threshold = client.model("mnist").out_of_distribution
        listed = {model.name: model.out_of_distribution for model in client.models()}
        digits = client.predict([encode(image) for image in images[:40]], model="mnist").predictions
        foreign = client.predict(foreign_digit_inputs(), model="mnist").predictions
    assert threshold is not None and threshold == listed["mnist"]
    assert threshold.method and threshold.target_in_distribution_flag_rate == pytest.approx(0.05)
    assert all(listed[name] is not None for name in ("fashion_mnist", "cifar10"))
    for prediction in digits + foreign:
        assert isinstance(prediction.in_distribution, bool) and isinstance(prediction.ood_score, float)
        assert prediction.in_distribution is (prediction.ood_score <= threshold.threshold), prediction
    # Calibrated to flag about 5 % of (validation) digits; a blank frame and noise are no digits.
    assert sum(p.in_distribution is True for p in digits) >= 0.8 * len(digits)
    assert [p.in_distribution for p in foreign] == [False, False]
    assert min(p.ood_score for p in foreign) > float(np.median([p.ood_score for p in digits]))


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_explain_answers_a_saliency_map_and_heatmap_of_the_model_input(gateway_url, test_images, name):
    images = test_images[name][0][:2]
    height, width = images.shape[1:3]
    with Client(gateway_url) as client:
        explained = client.predict([encode(image) for image in images], model=name, explain=True)
        plain = client.predict([encode(image) for image in images], model=name)
    assert [p.label for p in explained.predictions] == [p.label for p in plain.predictions]
    assert all(p.explanation is None for p in plain.predictions)
    for prediction in explained.predictions:
        explanation = prediction.explanation
        assert explanation is not None and explanation.method
        assert explanation.shape == (height, width)
        values = [value for row in explanation.saliency for value in row]
        assert min(values) >= 0 and max(values) > 0
        assert explanation.heatmap_png is not None
        heatmap = Image.open(io.BytesIO(explanation.heatmap_png))
        assert heatmap.format == "PNG" and heatmap.size == (width, height) and heatmap.mode in ("RGB", "RGBA")


def test_an_explained_request_holds_a_few_images_at_most(gateway_url, test_images):
    batch = [encode(image) for image in test_images["mnist"][0][:33]]  # more than any "few"
    with Client(gateway_url) as client:
        with pytest.raises(PixelgateError) as raised:
            client.predict(batch, model="mnist", explain=True)
        assert len(client.predict(batch, model="mnist").predictions) == 33  # unexplained: fine
    assert (raised.value.status, raised.value.code) == (400, "too_many_images_to_explain")


@pytest.mark.parametrize(
    ("image", "options", "status", "code"),
    [
        (b"not an image", {"model": "mnist"}, 400, "invalid_image"),
        (b"", {"model": "mnist"}, 400, None),
        (b"x", {"model": "no_such_model"}, 404, "model_not_found"),
        (b"x", {"model": "../../etc/passwd"}, 404, None),
        (b"x", {"model": "mnist", "top_k": 0}, 400, "invalid_top_k"),
        (b"x", {"model": "mnist", "top_k": 11}, 400, "invalid_top_k"),
    ],
)
def test_errors_carry_the_gateway_code_and_status(gateway_url, test_images, image, options, status, code):
    if image == b"x":
        image = encode(test_images["mnist"][0][0])
    with Client(gateway_url) as client, pytest.raises(PixelgateError) as raised:
        client.predict(image, **options)
    assert raised.value.status == status
    if code is not None:
        assert raised.value.code == code
    assert raised.value.message and raised.value.code in str(raised.value)


@pytest.mark.parametrize(
    ("image", "error"),
    [
        (np.zeros((28, 28, 2), np.uint8), ValueError),
        (np.full((28, 28), 2.0), ValueError),
        (np.full((28, 28), 300, np.int32), ValueError),
        (12345, TypeError),
        (io.StringIO("text"), TypeError),
    ],
)
def test_images_the_sdk_refuses_before_sending(gateway_url, image, error):
    with Client(gateway_url) as client, pytest.raises(error):
        client.predict(image, model="mnist")


def test_bad_arguments_fail_before_sending(gateway_url):
    with Client(gateway_url) as client:
        with pytest.raises(ValueError, match="no images"):
            client.predict([], model="mnist")
        with pytest.raises(ValueError, match="model"):
            client.predict(b"x", model="")
        with pytest.raises(FileNotFoundError):
            client.predict("/no/such/file.png", model="mnist")
    with pytest.raises(ValueError):
        Client(gateway_url, retries=-1)


class _RecordingHandler(BaseHTTPRequestHandler):
    """Answers /v1/models like a gateway with no models, anything else with HTML, and records
    the headers it was sent."""

    seen: list[dict[str, str]] = []

    def do_GET(self):  # noqa: N802 (http.server's naming)
        type(self).seen.append(dict(self.headers))
        is_api = self.path == "/v1/models"
        body = json.dumps({"models": []}).encode() if is_api else b"<html>a web server</html>"
        self.send_response(200)
        self.send_header("Content-Type", "application/json" if is_api else "text/html")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def recording_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RecordingHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_bearer_token_and_user_agent_are_sent(recording_server):
    with Client(recording_server, token="s3cret") as client:
        assert client.models() == []
    with Client(recording_server) as client:
        client.models()
    with_token, without = _RecordingHandler.seen[-2:]
    assert with_token["Authorization"] == "Bearer s3cret"
    assert "Authorization" not in without
    assert with_token["User-Agent"].startswith("pixelgate-client/")


def test_an_answer_that_is_not_json_is_an_sdk_error(recording_server):
    with Client(recording_server) as client:
        with pytest.raises(PixelgateError) as raised:
            client.health()
        assert client.ready() is False
    assert raised.value.code == "invalid_response" and "not JSON" in raised.value.message


def test_bearer_token_against_a_gateway_that_wants_one(token_gateway, test_images, monkeypatch, capsys):
    image = encode(test_images["mnist"][0][0])
    with Client(token_gateway) as client:
        with pytest.raises(PixelgateError) as raised:
            client.predict(image, model="mnist")
        assert client.ready() is True  # health and readiness stay open
    assert (raised.value.status, raised.value.code) == (401, "unauthorized")
    with Client(token_gateway, token="wrong") as client, pytest.raises(PixelgateError) as raised:
        client.models()
    assert raised.value.status == 401
    with Client(token_gateway, token=TOKEN) as client:
        assert client.predict(image, model="mnist").predictions[0].label == str(test_images["mnist"][1][0])
    assert cli_main(["--url", token_gateway, "models"]) == 1
    assert "unauthorized" in capsys.readouterr().err
    assert cli_main(["--url", token_gateway, "--token", TOKEN, "models"]) == 0
    monkeypatch.setenv("PIXELGATE_TOKEN", TOKEN)
    assert cli_main(["--url", token_gateway, "model", "mnist"]) == 0
    assert "mnist" in capsys.readouterr().out


def test_the_error_survives_pickling():
    error = pickle.loads(pickle.dumps(PixelgateError("gone", code="model_not_found", status=404)))
    assert (error.message, error.code, error.status) == ("gone", "model_not_found", 404)


def test_importing_the_sdk_loads_no_tensorflow_numpy_pillow_or_tqdm():
    code = (
        "import sys, pixelgate; print(sorted(m for m in ('tensorflow', 'numpy', 'PIL', 'tqdm', 'grpc') "
        "if m in sys.modules))"
    )
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]"
