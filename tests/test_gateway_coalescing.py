"""Coalescing: concurrent predictions of one model version share Predict calls.

The real gunicorn gateway in front of a real model server shows shared calls happen under
concurrency (and not when switched off), each request getting its rows; the CallPlanner's own
rules are tested in test_gateway_call_planner.py.
"""

from __future__ import annotations

import re
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import encode
from tests.gateway_stack import GatewayProcess, ModelServerProcess, export_slow_model

MODELS = ["mnist", "slow", "pooled"]


@pytest.fixture(scope="module")
def slow_stack(tmp_path_factory, models_dir):
    """A model server with the mnist test model, a model taking 0.3 s per call and one that also
    answers one row for the whole batch, and two one-worker gateways in front: coalescing on
    (one call in flight at a time) and off."""
    base = tmp_path_factory.mktemp("coalescing-models")
    shutil.copytree(models_dir / "mnist" / "1", base / "mnist" / "1")
    export_slow_model(base / "slow" / "1", 0.3)
    export_slow_model(base / "pooled" / "1", 0.3, per_image=False)
    config = base / "models.config"
    config.write_text(
        "model_config_list {\n"
        + "".join(f'  config {{ name: "{n}" base_path: "{base / n}" model_platform: "tensorflow" }}\n'
                  for n in MODELS)
        + "}\n"
    )
    logs = tmp_path_factory.mktemp("coalescing-logs")
    server = ModelServerProcess(config, logs, flags=("--tensorflow_inter_op_parallelism=8",))
    server.start(MODELS)
    gateways = {
        setting: GatewayProcess(server.target, base, logs / f"gateway-{setting}.log", env={
            "MODELS": ",".join(MODELS), "COALESCE_PREDICTIONS": setting, "COALESCE_MAX_IN_FLIGHT": "1",
        })
        for setting in ("true", "false")
    }
    try:
        for gateway in gateways.values():
            gateway.start(wait_path="/readyz")
        yield gateways
    finally:
        for gateway in gateways.values():
            if gateway.process is not None:
                gateway.stop()
        server.stop()


def calls_and_images(gateway: GatewayProcess, model: str) -> tuple[float, float]:
    """(Predict calls, images in them) for `model`, from the gateway's /metrics."""
    text = requests.get(f"{gateway.url}/metrics", timeout=10).text
    values = {}
    for what in ("count", "sum"):
        series = rf'^pixelgate_model_server_batch_images_{what}{{model="{model}"}} (\S+)$'
        match = re.search(series, text, re.M)
        values[what] = float(match.group(1)) if match else 0.0
    return values["count"], values["sum"]


@pytest.mark.parametrize(("setting", "shared"), [("true", True), ("false", False)])
def test_concurrent_requests_share_calls_only_when_coalescing_is_on(slow_stack, test_images, setting, shared):
    gateway = slow_stack[setting]
    digit = encode(test_images["mnist"][0][0])
    before = calls_and_images(gateway, "slow")
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(
            lambda _: requests.post(f"{gateway.url}/v1/models/slow:predict", data=digit,
                                    headers={"Content-Type": "image/png"}, timeout=30), range(8)))
    assert [a.status_code for a in answers] == [200] * 8
    assert {a.json()["predictions"][0]["class_index"] for a in answers} == {3}
    after = calls_and_images(gateway, "slow")
    calls, images = after[0] - before[0], after[1] - before[1]
    assert images == 8
    # With one call in flight, the 7 requests arriving during the first 0.3 s call queue and share.
    assert (calls < 8) if shared else (calls == 8)


def test_shared_calls_give_each_request_the_answer_it_gets_alone(slow_stack, test_images):
    gateway = slow_stack["true"]
    images, _ = test_images["mnist"]
    payloads = [encode(image) for image in images[:24]]

    def ask(payload: bytes) -> list[float]:
        response = requests.post(f"{gateway.url}/v1/models/mnist:predict?top_k=10", data=payload,
                                 headers={"Content-Type": "image/png"}, timeout=30)
        assert response.status_code == 200, response.text
        return [entry["probability"] for entry in sorted(response.json()["predictions"][0]["top_k"],
                                                          key=lambda entry: entry["class_index"])]

    alone = [ask(p) for p in payloads]
    before = calls_and_images(gateway, "mnist")
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(ask, payloads * 4))
    after = calls_and_images(gateway, "mnist")
    np.testing.assert_allclose(np.array(together), np.array(alone * 4), rtol=1e-5, atol=1e-6)
    assert after[1] - before[1] == 96
    assert after[0] - before[0] < 96  # 8 clients at once, one call out at a time: calls were shared


def test_a_model_whose_answer_cannot_be_split_falls_back_to_one_call_per_request(slow_stack, test_images):
    gateway = slow_stack["true"]
    digit = encode(test_images["mnist"][0][0])

    def four_at_once() -> tuple[list[int], float]:
        before = calls_and_images(gateway, "pooled")
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(
                lambda _: requests.post(f"{gateway.url}/v1/models/pooled:predict", data=digit,
                                        headers={"Content-Type": "image/png"}, timeout=30), range(4)))
        assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
        calls = calls_and_images(gateway, "pooled")[0] - before[0]
        return [a.json()["predictions"][0]["class_index"] for a in answers], calls

    classes, _ = four_at_once()  # three queue behind the first call; their shared answer is one row
    assert classes == [3] * 4
    log = gateway.log_file.read_text()
    assert log.count("predictions are not coalesced") == 1, log[-2000:]
    classes, calls = four_at_once()
    assert classes == [3] * 4
    assert calls == 4  # remembered: each request now goes alone


def test_several_images_to_a_model_without_one_row_per_image_answer_503(slow_stack, test_images):
    """Its answer cannot be told apart by image: a clear error, not rows cut out of one answer."""
    digit = encode(test_images["mnist"][0][0])
    response = requests.post(f"{slow_stack['true'].url}/v1/models/pooled:predict",
                             files=[("image", digit), ("image", digit)], timeout=30)
    assert (response.status_code, response.json()["code"]) == (503, "model_misconfigured")
    assert "one row per image" in response.json()["error"]


def metric(gateway: GatewayProcess, name: str, **labels: str) -> float:
    """One sample of the gateway's /metrics (0 while the series does not exist yet)."""
    text = requests.get(f"{gateway.url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_a_failed_shared_call_counts_once_in_the_model_server_errors(slow_stack, test_images, tmp_path):
    """Every call to the 0.3 s model outlives a 0.2 s deadline: eight requests answer 504, and the
    model-server error counter counts the calls that failed, not the requests they carried (nor a
    request that gave up while queued, which made no call)."""
    shared = slow_stack["true"]
    gateway = GatewayProcess(shared.model_server, shared.models_dir, tmp_path / "gateway.log", env={
        "MODELS": ",".join(MODELS), "COALESCE_PREDICTIONS": "true", "COALESCE_MAX_IN_FLIGHT": "1",
        "REQUEST_TIMEOUT_SECONDS": "0.2",
    })
    gateway.start()
    try:
        digit = encode(test_images["mnist"][0][0])
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(
                lambda _: requests.post(f"{gateway.url}/v1/models/slow:predict", data=digit,
                                        headers={"Content-Type": "image/png"}, timeout=30), range(8)))
        assert [a.status_code for a in answers] == [504] * 8
        assert {a.json()["code"] for a in answers} == {"deadline_exceeded"}
        calls, _ = calls_and_images(gateway, "slow")
        errors = metric(gateway, "pixelgate_model_server_errors_total", method="Predict",
                        code="DEADLINE_EXCEEDED")
        assert 1 <= calls < 8  # the requests queued behind the first call shared the next
        assert errors == calls
        assert metric(gateway, "pixelgate_requests_total", model="slow", status="504") == 8
    finally:
        gateway.stop()
