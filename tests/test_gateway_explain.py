"""explain=true through the real gateway (gunicorn) and the real model server: each prediction's saliency
map comes from the version's `explain` signature, rounded, with a decodable heatmap PNG; the label stays
serving_default's; the explained-request limit is a 400, never a stall. Versions without the signature:
tests/test_gateway_ood.py (old exports)."""

from __future__ import annotations

import base64
import io
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from PIL import Image

from serving.gateway.config import DEFAULTS
from serving.gateway.explanations import ExplanationSignature, explanation, find, heatmap_png
from tests.conftest import MODEL_NAMES, encode, signature_output

SHAPES = {"mnist": (28, 28), "fashion_mnist": (28, 28), "cifar10": (32, 32)}


def predict(url, name, images, **params):
    return requests.post(f"{url}/v1/models/{name}:predict", files=[("image", image) for image in images],
                         params=params, timeout=60)


@pytest.fixture(scope="module")
def explain_signature(exported_models):
    """name -> callable(float32 batch) -> saliency, straight from the exported SavedModel's `explain`."""
    return signature_output(exported_models, "explain", "saliency")


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_each_prediction_carries_the_signatures_saliency_and_its_heatmap(gateway_url, test_images, models_dir,
                                                                         explain_signature, name):
    images, _ = test_images[name]
    payloads = [encode(image) for image in images[:2]]  # PNG of the model's size: the very tensor
    plain = predict(gateway_url, name, payloads).json()
    response = predict(gateway_url, name, payloads, explain="true")
    assert response.status_code == 200, response.text
    body = response.json()
    expected = explain_signature[name](images[:2].astype(np.float32) / 255)
    described = json.loads((models_dir / name / "1" / "assets" / "explain.json").read_text())
    height, width = SHAPES[name]
    for prediction, unexplained, saliency in zip(body["predictions"], plain["predictions"], expected,
                                                 strict=True):
        # The label is serving_default's, the same as without explain.
        assert prediction["label"] == unexplained["label"]
        assert prediction["probability"] == pytest.approx(unexplained["probability"], abs=1e-6)
        explained = prediction["explanation"]
        assert explained["method"] == described["method"]
        listed = requests.get(f"{gateway_url}/v1/models/{name}", timeout=30).json()["explanation"]
        assert listed == {"method": described["method"]}
        answered = np.array(explained["saliency"])
        assert answered.shape == (height, width) and (answered >= 0).all()
        peak = float(saliency.max())
        assert peak > 0 and answered.max() == pytest.approx(peak, rel=1e-3)
        np.testing.assert_allclose(answered, np.maximum(saliency, 0), atol=peak * 1e-3)
        heatmap = Image.open(io.BytesIO(base64.b64decode(explained["heatmap_png"])))
        assert heatmap.format == "PNG" and heatmap.size == (width, height) and heatmap.mode == "RGB"
        # The map's peak is the heatmap's brightest pixel.
        brightness = np.asarray(heatmap, dtype=np.float32).sum(axis=2)
        assert brightness[np.unravel_index(answered.argmax(), answered.shape)] == brightness.max()


def test_the_map_lies_on_the_image_the_model_saw(gateway_url, test_images):
    # Integrated gradients from a black image are 0 wherever the model's input is black: the map is
    # aligned with the preprocessed image (not transposed, flipped or of the upload's size).
    images, _ = test_images["mnist"]
    upload = encode(np.pad(images[3], ((10, 30), (5, 5), (0, 0))))  # reframed by the gateway
    body = predict(gateway_url, "mnist", [upload], explain="true", debug="true").json()
    prediction = body["predictions"][0]
    seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(prediction["preprocessed"]))))
    saliency = np.array(prediction["explanation"]["saliency"])
    assert saliency.shape == seen.shape == (28, 28)
    assert (saliency[seen == 0] == 0).all()
    assert saliency[seen > 0].sum() > 0


def test_explanations_are_only_answered_when_asked(gateway_url, test_images):
    images, _ = test_images["fashion_mnist"]
    for params in ({}, {"explain": "false"}, {"explain": "0"}):
        body = predict(gateway_url, "fashion_mnist", [encode(images[0])], **params).json()
        assert "explanation" not in body["predictions"][0]


@pytest.mark.parametrize("value", ["maybe", "2", "truee"])
def test_an_unreadable_explain_value_is_a_400(gateway_url, test_images, value):
    images, _ = test_images["mnist"]
    response = predict(gateway_url, "mnist", [encode(images[0])], explain=value)
    assert response.status_code == 400
    assert response.json()["code"] == "invalid_explain"


def test_the_explained_request_limit(gateway_url, test_images):
    limit = DEFAULTS["MAX_IMAGES_PER_EXPLAIN"]
    images, _ = test_images["mnist"]
    payloads = [encode(image) for image in images[:limit + 1]]
    at_limit = predict(gateway_url, "mnist", payloads[:limit], explain="true")
    assert at_limit.status_code == 200, at_limit.text
    assert all(p["explanation"]["saliency"] for p in at_limit.json()["predictions"])
    over = predict(gateway_url, "mnist", payloads, explain="true")
    assert over.status_code == 400
    body = over.json()
    assert body["code"] == "too_many_images_to_explain"
    assert f"at most {limit}" in body["error"]
    # The same images without explain are a plain prediction.
    assert predict(gateway_url, "mnist", payloads).status_code == 200


def test_concurrent_explained_and_plain_requests_each_get_their_own_answer(gateway_url, test_images):
    # Explained and plain requests of one version go to different signatures: calls are shared only
    # within each, and every request still gets its own rows.
    images, _ = test_images["mnist"]
    payloads = [encode(image) for image in images[:12]]
    expected = [p["class_index"] for p in predict(gateway_url, "mnist", payloads).json()["predictions"]]

    def ask(index):
        explain = index % 2 == 0
        response = predict(gateway_url, "mnist", [payloads[index]], explain=str(explain).lower())
        assert response.status_code == 200, response.text
        prediction = response.json()["predictions"][0]
        return prediction["class_index"], "explanation" in prediction, explain

    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(ask, range(len(payloads))))
    assert [answer[0] for answer in answers] == expected
    assert all(has == asked for _, has, asked in answers)


def test_rendering_rounds_to_four_significant_digits_of_the_peak_and_keeps_blank_maps_blank():
    saliency = np.array([[0.012345678, 0.0000023], [0.00098765, -0.5]], np.float32)
    answer = explanation(saliency, "integrated_gradients")
    assert answer["saliency"] == [[0.01235, 0.0], [0.00099, 0.0]]
    blank = explanation(np.zeros((3, 4), np.float32), "integrated_gradients")
    assert blank["saliency"] == [[0.0] * 4] * 3
    image = np.asarray(Image.open(io.BytesIO(base64.b64decode(blank["heatmap_png"]))))
    assert image.shape == (3, 4, 3) and len(np.unique(image.reshape(-1, 3), axis=0)) == 1
    ramp = np.asarray(Image.open(io.BytesIO(heatmap_png(np.linspace(0, 1, 16).reshape(4, 4), 1.0))))
    assert ramp.shape == (4, 4, 3)
    assert (np.diff(ramp.reshape(16, 3).astype(int).sum(axis=1)) > 0).all()  # brighter with the value


def test_which_signature_explains_comes_from_the_metadata_and_explain_json():
    from serving.protos.tensorflow.core.protobuf import meta_graph_pb2

    signature = meta_graph_pb2.SignatureDef()
    signature.inputs["x"].name, signature.outputs["saliency"].name = "x:0", "s:0"
    signatures = {"serving_default": meta_graph_pb2.SignatureDef(), "explain": signature}
    found = find(signatures, {"method": "integrated_gradients"}, "images", "m")
    assert found == ExplanationSignature("explain", "x", "saliency", "integrated_gradients")
    assert find(signatures, {}, "images", "m").method == "saliency"  # no explain.json: the signature alone
    assert find({"serving_default": signature}, {}, "images", "m") is None  # an old export
    assert find(signatures, {"signature": "other"}, "images", "m") is None
    assert find(signatures, {"output_key": "heat"}, "images", "m") is None
