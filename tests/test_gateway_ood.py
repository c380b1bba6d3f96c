"""Out-of-distribution flags through the real gateway (gunicorn) and model server: test images mostly pass,
noise and blank frames are flagged with higher scores, the threshold is in the model listing, the drift
metrics move; a version exported the old way (no score, no explain signature) answers null, never an
error; shared and split Predict calls keep both outputs' rows together."""

from __future__ import annotations

import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from serving.gateway import out_of_distribution
from serving.gateway.call_planner import CallPlanner
from serving.gateway.model_server_client import PredictCall
from tests.conftest import MODEL_NAMES, encode
from tests.test_gateway_call_planner import Calls, planner_of, wait_queued

SHAPES = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3)}


def predictions(url, name, arrays, **params):
    response = requests.post(f"{url}/v1/models/{name}:predict", files=[("image", encode(a)) for a in arrays],
                             params=params, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()["predictions"]


def foreign_images(name, seed=0):
    """Uniform noise and blank frames (black, white, grey, dark grey) of the model's shape."""
    shape = SHAPES[name]
    noise = np.random.default_rng(seed).integers(0, 256, (6, *shape), dtype=np.uint8)
    return [*noise, *(np.full(shape, level, np.uint8) for level in (0, 255, 128, 40))]


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_test_images_mostly_pass_and_foreign_ones_are_flagged_with_higher_scores(gateway_url, test_images,
                                                                                 name):
    images, _ = test_images[name]
    inside = predictions(gateway_url, name, images[:40])
    flags = [p["in_distribution"] for p in inside]
    assert all(isinstance(flag, bool) for flag in flags)
    assert sum(flags) >= 32, flags  # calibrated to flag 5 % of validation images
    outside = predictions(gateway_url, name, foreign_images(name))
    assert [p["in_distribution"] for p in outside] == [False] * len(outside)
    inside_scores = [p["ood_score"] for p in inside]
    assert min(p["ood_score"] for p in outside) > np.median(inside_scores)
    detail = requests.get(f"{gateway_url}/v1/models/{name}", timeout=30).json()
    threshold = detail["out_of_distribution"]["threshold"]
    assert all((p["ood_score"] <= threshold) == p["in_distribution"] for p in inside + outside)


def test_the_threshold_is_shown_by_the_model_detail_and_the_listing(gateway_url, models_dir):
    listing = {m["name"]: m for m in requests.get(f"{gateway_url}/v1/models", timeout=30).json()["models"]}
    for name in MODEL_NAMES:
        asset = json.loads((models_dir / name / "1" / "assets" / "ood.json").read_text())
        expected = {"threshold": asset["threshold"], "method": asset["method"],
                    "target_in_distribution_flag_rate": asset["target_in_distribution_flag_rate"]}
        detail = requests.get(f"{gateway_url}/v1/models/{name}", timeout=30).json()
        assert detail["out_of_distribution"] == expected
        # Each served version's too: `version=` requests are flagged against it.
        assert [version["out_of_distribution"] for version in detail["versions"]] == [expected]
        assert listing[name]["out_of_distribution"] == expected
        assert expected["target_in_distribution_flag_rate"] == 0.05


def read_metrics(url):
    samples = {}
    for family in text_string_to_metric_families(requests.get(f"{url}/metrics", timeout=30).text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def test_the_drift_metrics_move(gateway_url, test_images):
    images, _ = test_images["mnist"]
    inverted = 255 - np.pad(images[:3], ((0, 0), (8, 8), (8, 8), (0, 0)))  # dark digits on white, framed wide
    before = read_metrics(gateway_url)
    flagged = predictions(gateway_url, "mnist", [*images[:5], *inverted, *foreign_images("mnist")])
    after = read_metrics(gateway_url)

    def moved(name, **labels):
        key = (name, tuple(sorted({"model": "mnist", **labels}.items())))
        return after.get(key, 0.0) - before.get(key, 0.0)

    total = 5 + 3 + len(foreign_images("mnist"))
    flags = [p["in_distribution"] for p in flagged]
    assert moved("pixelgate_out_of_distribution_images_total") == flags.count(False)
    assert moved("pixelgate_ood_score_count") == total
    assert moved("pixelgate_ood_score_sum") == pytest.approx(sum(p["ood_score"] for p in flagged), rel=1e-4)
    assert moved("pixelgate_ood_score_bucket", le="+Inf") == total
    assert moved("pixelgate_input_mean_intensity_count") == total
    assert moved("pixelgate_input_foreground_fraction_count") == total
    assert 0 < moved("pixelgate_input_mean_intensity_sum") < total
    assert moved("pixelgate_preprocessing_adjustments_total", adjustment="inverted") >= 3
    assert moved("pixelgate_preprocessing_adjustments_total", adjustment="cropped") >= 3


# A version exported before scores and explanations: served as before, with null fields.

@pytest.fixture(scope="module")
def old_export_gateway(tmp_path_factory):
    """The in-process gateway in front of the real embedded model server, serving `digits`: one version
    exported the old way (serving_default answers probabilities only; no ood.json, no explain signature)."""
    from serving.gateway import create_app
    from serving.model_server import ServerOptions, create_server, parse_model_server_config
    from tests.model_fixtures.keras_classifier import export_test_model

    base = tmp_path_factory.mktemp("old_export")
    version = base / "digits" / "1"
    export_test_model(version)
    (version / "assets").mkdir(exist_ok=True)
    (version / "assets" / "labels.txt").write_text("".join(f"{digit}\n" for digit in range(10)))
    (version / "assets" / "preprocessing.json").write_text(json.dumps(
        {"mode": "resize", "input_key": "images", "output_key": "probabilities"}))
    config = parse_model_server_config(f'model_config_list {{ config {{ name: "digits" base_path: '
                                       f'"{base / "digits"}" model_platform: "tensorflow" }} }}')
    server, port = create_server("127.0.0.1:0", config, ServerOptions(file_system_poll_wait_seconds=0))
    server.start()
    try:
        app = create_app({"MODEL_SERVER": f"127.0.0.1:{port}", "MODEL_BASE_PATH": str(base)})
        yield app.test_client()
    finally:
        server.stop(0)


def old_predict(client, arrays, query=""):
    return client.post(f"/v1/models/digits:predict{query}",
                       data={"image": [(io.BytesIO(encode(a)), "x.png") for a in arrays]},
                       content_type="multipart/form-data")


def test_an_old_export_answers_null_flags(old_export_gateway, test_images):
    images, _ = test_images["mnist"]
    response = old_predict(old_export_gateway, [*images[:3], *foreign_images("mnist")[:2]])
    assert response.status_code == 200, response.get_json()
    for prediction in response.get_json()["predictions"]:
        assert prediction["in_distribution"] is None and prediction["ood_score"] is None
        assert "explanation" not in prediction and len(prediction["top_k"]) == 3
    assert old_export_gateway.get("/v1/models/digits").get_json()["out_of_distribution"] is None
    listing = old_export_gateway.get("/v1/models").get_json()["models"]
    assert listing[0]["state"] == "AVAILABLE" and listing[0]["out_of_distribution"] is None


def test_an_old_export_refuses_explanations_with_a_400_naming_the_version(old_export_gateway, test_images):
    images, _ = test_images["mnist"]
    response = old_predict(old_export_gateway, images[:2], "?explain=true")
    assert response.status_code == 400
    body = response.get_json()
    assert body["code"] == "explanation_unavailable"
    assert "'digits' version 1" in body["error"]
    # The listing says so beforehand, so that a page or client need not find out by a 400.
    assert old_export_gateway.get("/v1/models/digits").get_json()["explanation"] is None
    # The limit is checked first: it needs no model.
    response = old_predict(old_export_gateway, images[:9], "?explain=true")
    assert response.get_json()["code"] == "too_many_images_to_explain"


# The CallPlanner with the two outputs of a version with a score (both one row per image).

def scored(images: np.ndarray) -> dict[str, np.ndarray]:
    return {"probabilities": np.repeat(images[:, :1], 3, axis=1), "ood_score": images[:, 0] * 100}


def two_output_call(value: float, images: int) -> PredictCall:
    batch = np.full((images, 3), value, dtype=np.float32)
    return PredictCall("model", 1, "images", ("probabilities", "ood_score"), batch)


def test_a_shared_call_splits_both_outputs_by_request():
    calls = Calls()
    planner = planner_of(calls)
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(planner.predict, two_output_call(0.5, 1), time.monotonic() + 10)
        calls.wait_for(1)
        queued = [pool.submit(planner.predict, two_output_call(value, count), time.monotonic() + 10)
                  for value, count in ((1.0, 2), (2.0, 1))]
        wait_queued(planner, 2)
        calls.answer(0, scored(calls.started[0][0]))
        calls.wait_for(2)
        calls.answer(1, scored(calls.started[1][0]))
        answers = [future.result(timeout=10) for future in (first, *queued)]
    for answer, (value, count) in zip(answers, ((0.5, 1), (1.0, 2), (2.0, 1)), strict=True):
        assert answer.outputs["ood_score"].tolist() == [value * 100] * count
        assert answer.outputs["probabilities"].shape == (count, 3)


def test_a_split_request_joins_both_outputs_in_order():
    calls = Calls()
    planner = CallPlanner(calls, max_images_per_call=4)  # type: ignore[arg-type]
    values = np.arange(10, dtype=np.float32)
    call = PredictCall("model", 1, "images", ("probabilities", "ood_score"), np.repeat(values[:, None], 3, 1))
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(planner.predict, call, time.monotonic() + 10)
        calls.wait_for(3)
        for index in range(3):
            calls.answer(index, scored(calls.started[index][0]))
        outputs = answer.result(timeout=10).outputs
    assert outputs["ood_score"].tolist() == (values * 100).tolist()
    assert outputs["probabilities"][:, 0].tolist() == values.tolist()


def test_explain_calls_are_never_shared_with_plain_ones():
    plain = two_output_call(1.0, 1)
    explain = PredictCall("model", 1, "images", plain.output_keys, plain.images, signature_name="explain")
    assert plain.key != explain.key and plain.signature_name == "serving_default"


# What the catalog makes of a version's outputs and ood.json (serving/gateway/out_of_distribution.py).

def test_a_score_without_a_usable_threshold_answers_scores_and_null_flags():
    outputs = {"probabilities": None, "ood_score": None}
    assert out_of_distribution.find({"probabilities": None}, {}, "m") is None  # an old export
    for asset in ({}, {"threshold": "high"}, {"threshold": float("nan")}, {"threshold": True}):
        found = out_of_distribution.find(outputs, asset, "m")
        assert found is not None and found.threshold is None and found.describe() is None
        assert found.judge(np.array([0.5, 3.0])) == ([0.5, 3.0], [None, None])
    found = out_of_distribution.find(outputs, {"threshold": 1, "method": "energy"}, "m")
    assert found is not None and found.describe() == {
        "threshold": 1.0, "method": "energy", "target_in_distribution_flag_rate": None}
    scores, flags = found.judge(np.array([0.123456, 1.0, 1.5, np.nan]))
    assert scores == [0.1235, 1.0, 1.5, None] and flags == [True, True, False, None]
    # ood.json naming an output serving_default lacks: no flag, rather than a failing request.
    assert out_of_distribution.find(outputs, {"output_key": "other", "threshold": 1.0}, "m") is None
