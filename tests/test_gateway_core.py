"""The gateway core (serving/gateway/core.py) without a socket: a real catalog and call planner
over a model-server client that answers in memory."""

from __future__ import annotations

import io
import json
import shutil
import time
from concurrent.futures import Future
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from serving.gateway.call_planner import CallPlanner
from serving.gateway.catalog import ModelCatalog
from serving.gateway.config import load_config, parse_boolean
from serving.gateway.core import Gateway, RequestTrace
from serving.gateway.errors import InvalidImageError, ModelNotFoundError
from serving.gateway.model_server_client import Answer, PredictCall
from serving.gateway.requests_parsing import PredictOptions
from serving.model_status import VersionStatus
from serving.protos.tensorflow.core.protobuf import meta_graph_pb2

CLASSES = ["dark", "grey", "light"]


class InMemoryModelServer:
    """The model-server client's calls, answered here: class scores from each image's mean pixel."""

    def __init__(self, version: int = 1):
        self.version = version
        self.calls: list[PredictCall] = []
        self.unloaded_once = False

    def signatures(self, name: str, version: int | None = None, label: str | None = None):
        signature = meta_graph_pb2.SignatureDef()
        for size in (-1, 4, 4, 1):
            signature.inputs["images"].tensor_shape.dim.add(size=size)
        for size in (-1, len(CLASSES)):
            signature.outputs["probabilities"].tensor_shape.dim.add(size=size)
        return version or self.version, {"serving_default": signature}

    def status(self, name: str, timeout: float | None = None) -> list[VersionStatus]:
        return [VersionStatus(self.version, "AVAILABLE", "")]

    def send(self, call: PredictCall, deadline: float) -> Answer:
        assert deadline > time.monotonic()
        self.calls.append(call)
        if self.unloaded_once:
            self.unloaded_once = False
            raise ModelNotFoundError(f"version {call.version} is not loaded")
        means = call.images.reshape(len(call.images), -1).mean(axis=1)
        scores = np.stack([1 - means, 1 - abs(means - 0.5) * 2, means], axis=1).astype(np.float32)
        return Answer(call.version, {"probabilities": scores / scores.sum(axis=1, keepdims=True)})

    def start(self, call: PredictCall, deadline: float) -> Future[Answer]:
        future: Future[Answer] = Future()
        future.set_result(self.send(call, deadline))
        return future


def png(level: int, size: int = 8) -> bytes:
    buffer = io.BytesIO()
    Image.new("L", (size, size), level).save(buffer, "PNG")
    return buffer.getvalue()


def export_toy_model(base: Path) -> None:
    assets = base / "toy" / "1" / "assets"
    assets.mkdir(parents=True)
    (assets / "preprocessing.json").write_text(json.dumps({"mode": "resize"}))
    (assets / "labels.txt").write_text("\n".join(CLASSES))


@pytest.fixture
def server() -> InMemoryModelServer:
    return InMemoryModelServer()


@pytest.fixture
def gateway(tmp_path: Path, server: InMemoryModelServer) -> Gateway:
    export_toy_model(tmp_path)
    config = load_config({"MODEL_BASE_PATH": str(tmp_path), "MODELS": "toy", "MAX_IMAGES_PER_CALL": 2},
                         environ={})
    planner = CallPlanner(server, config["MAX_IMAGES_PER_CALL"])  # type: ignore[arg-type]
    catalog = ModelCatalog(server, tmp_path, ["toy"])  # type: ignore[arg-type]
    return Gateway(config, catalog, planner, server)  # type: ignore[arg-type]


def options(top_k: int = 2, version: int | None = None, debug: bool = False) -> PredictOptions:
    return PredictOptions(top_k=top_k, version=version, label=None, debug=debug)


def test_a_prediction_names_the_model_and_version_and_ranks_the_classes(gateway, server):
    trace = RequestTrace()
    answer = gateway.predict("toy", [png(0), png(255)], options(), "r1", trace)
    assert (answer["model"], answer["version"]) == ("toy", 1)
    assert [p["label"] for p in answer["predictions"]] == ["dark", "light"]
    assert [len(p["top_k"]) for p in answer["predictions"]] == [2, 2]
    assert server.calls[0].request_ids == ("r1",) and server.calls[0].images.shape == (2, 4, 4, 1)
    assert (trace.model, trace.version, trace.images) == ("toy", 1, 2)


def test_more_images_than_one_call_holds_go_as_several_calls_answered_in_order(gateway, server):
    levels = [0, 255, 0, 255, 128]
    answer = gateway.predict("toy", [png(level) for level in levels], options(top_k=1))
    assert [len(call.images) for call in server.calls] == [2, 2, 1]
    assert [p["label"] for p in answer["predictions"]] == ["dark", "light", "dark", "light", "grey"]


def test_an_unknown_model_is_not_found_and_makes_no_call(gateway, server):
    with pytest.raises(ModelNotFoundError, match="unknown model 'nope'"):
        gateway.predict("nope", [png(0)], options())
    assert not server.calls


def test_an_undecodable_image_is_an_invalid_image(gateway, server):
    with pytest.raises(InvalidImageError):
        gateway.predict("toy", [b"not an image"], options())
    assert not server.calls


def test_a_latest_version_unloaded_meanwhile_is_asked_again_once(gateway, server):
    gateway.predict("toy", [png(0)], options())
    server.unloaded_once = True
    answer = gateway.predict("toy", [png(0)], options())
    assert answer["predictions"][0]["label"] == "dark" and len(server.calls) == 3


def test_debug_answers_what_the_model_saw(gateway):
    prediction = gateway.predict("toy", [png(255)], options(debug=True))["predictions"][0]
    assert prediction["preprocessed"] and prediction["preprocessing"]["mode"] == "resize"


def test_listing_detail_and_readiness(gateway):
    (listed,) = gateway.list_models()
    assert (listed["name"], listed["state"], listed["classes"]) == ("toy", "AVAILABLE", CLASSES)
    detail = gateway.model_detail("toy")
    assert detail["versions"] == [
        {"version": 1, "state": "AVAILABLE", "error": "", "out_of_distribution": None}]  # exported without
    assert detail["input"]["shape"] == [4, 4, 1]
    assert gateway.readiness() == (True, {"toy": "AVAILABLE"})


def test_a_model_added_while_ready_does_not_hold_readiness_back_until_first_available(tmp_path: Path):
    class Loading(InMemoryModelServer):
        loading = {"new"}

        def status(self, name: str, timeout: float | None = None) -> list[VersionStatus]:
            return [VersionStatus(1, "LOADING", "")] if name in self.loading else super().status(name)

    export_toy_model(tmp_path)
    shutil.copytree(tmp_path / "toy", tmp_path / "new")
    loading = Loading()
    catalog = ModelCatalog(loading, tmp_path, ["toy", "new"])  # type: ignore[arg-type]
    planner = CallPlanner(loading, 32)  # type: ignore[arg-type]
    gateway = Gateway(load_config(environ={}), catalog, planner, loading)  # type: ignore[arg-type]
    # Never ready yet: every model must be AVAILABLE first (a fresh gateway waits for all).
    assert gateway.readiness() == (False, {"toy": "AVAILABLE", "new": "LOADING"})
    catalog.configured_names = ("toy",)
    assert gateway.readiness() == (True, {"toy": "AVAILABLE"})
    catalog.configured_names = ("toy", "new")  # registered while the gateway serves
    assert gateway.readiness() == (True, {"toy": "AVAILABLE", "new": "LOADING"})
    Loading.loading = set()
    assert gateway.readiness() == (True, {"toy": "AVAILABLE", "new": "AVAILABLE"})
    # Once AVAILABLE here, it counts like the others: its loss makes the gateway unready.
    Loading.loading = {"toy"}
    assert gateway.readiness() == (False, {"toy": "LOADING", "new": "AVAILABLE"})


@pytest.mark.parametrize(("text", "value"), [("true", True), ("ON", True), (" 1 ", True), ("no", False),
                                             ("", False), ("0", False)])
def test_one_boolean_parser(text, value):
    assert parse_boolean(text) is value


@pytest.mark.parametrize("text", ["maybe", "2", "yes please"])
def test_a_setting_that_is_not_a_boolean_names_the_variable(text):
    with pytest.raises(ValueError, match="COALESCE_PREDICTIONS"):
        load_config(environ={"COALESCE_PREDICTIONS": text})
    with pytest.raises(ValueError, match="GATEWAY_REUSE_PORT"):
        load_config(environ={"GATEWAY_REUSE_PORT": text})


@pytest.mark.parametrize(("key", "text"), [
    ("GATEWAY_BODY_TIMEOUT_SECONDS", "0"), ("MAX_IMAGES_PER_EXPLAIN", "0"), ("MAX_IMAGES_PER_EXPLAIN", "-1"),
    ("MAX_TOP_K", "0"), ("REQUEST_TIMEOUT_SECONDS", "-0.5")])
def test_limits_and_timeouts_must_be_positive(key, text):
    # MAX_IMAGES_PER_EXPLAIN=-1 answered every explained request "at most -1 are explained at once".
    with pytest.raises(ValueError, match=f"{key}={text!r} must be greater than zero"):
        load_config(environ={key: text})


def test_a_default_top_k_above_the_maximum_is_refused():
    # Every request without top_k would have answered 400 invalid_top_k, blaming the caller.
    with pytest.raises(ValueError, match="DEFAULT_TOP_K=20 is above MAX_TOP_K=10"):
        load_config(environ={"DEFAULT_TOP_K": "20"})
    with pytest.raises(ValueError, match="MAX_IMAGES_PER_EXPLAIN=-1 must be greater than zero"):
        load_config({"MAX_IMAGES_PER_EXPLAIN": -1}, environ={})


def test_create_app_imports_neither_gunicorn_nor_tensorflow():
    import subprocess
    import sys

    code = ("import sys; from serving.gateway import create_app; create_app({'MODELS': 'x'}); "
            "print(sorted(m for m in ('gunicorn', 'tensorflow') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            cwd=Path(__file__).resolve().parent.parent, check=True)
    assert result.stdout.strip() == "[]"
