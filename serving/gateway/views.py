"""HTTP endpoints: decode the request, call the preprocessing and the model server, answer JSON."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
from flask import Blueprint, current_app, g, jsonify, request
from werkzeug.exceptions import MethodNotAllowed

from serving.gateway import metrics
from serving.gateway.backend import ModelCatalog, ModelInfo, ModelServerClient
from serving.gateway.content_normalization import Framing
from serving.gateway.errors import (
    GatewayError,
    InvalidImageError,
    InvalidRequestError,
    ModelMisconfiguredError,
    ModelNotFoundError,
)
from serving.gateway.limits import ImageLimits, check_image_sizes
from serving.gateway.preprocess import model_input_png, preprocess_images_explained
from serving.gateway.request_hooks import request_id
from serving.gateway.requests_parsing import extract_images, parse_options

logger = logging.getLogger(__name__)

blueprint = Blueprint("gateway", __name__)


def _catalog() -> ModelCatalog:
    return current_app.extensions["pixelgate.catalog"]


def _client() -> ModelServerClient:
    return current_app.extensions["pixelgate.client"]


Answer = TypeVar("Answer")
MAX_LOOKUP_THREADS = 32


def _for_each_model(names: list[str], look_up: Callable[[str], Answer]) -> list[Answer]:
    """`look_up(name)` for every model (up to MAX_LOOKUP_THREADS at once), in order: with the model
    server stalled, a listing or a readiness probe then waits out one call's deadline, not one per
    model. The threads are this request's own, so a probe never queues behind listings. `look_up`
    runs on them: it gets what it needs from the view, not from `current_app`."""
    if len(names) <= 1:
        return [look_up(name) for name in names]
    with ThreadPoolExecutor(min(len(names), MAX_LOOKUP_THREADS), "pixelgate-model-lookup") as lookups:
        return list(lookups.map(look_up, names))


def describe(info: ModelInfo) -> dict:
    return {
        "name": info.name,
        "version": info.version,
        "input": {"key": info.input_key, "shape": [info.spec.height, info.spec.width, info.spec.channels]},
        "classes": list(info.classes),
        "test_accuracy": info.test_accuracy,  # from the version's assets.extra/evaluation.json; null if absent
    }


def top_predictions(probabilities: np.ndarray, classes: tuple[str, ...], top_k: int) -> list[dict]:
    """Per image: the top label, its class index and probability, and the top-k list."""
    answers = []
    k = min(top_k, probabilities.shape[-1])
    for row in probabilities:
        order = np.argsort(-row, kind="stable")[:k]
        ranked = [
            {"label": classes[i] if i < len(classes) else str(i), "class_index": int(i), "probability": float(row[i])}
            for i in order
        ]
        answers.append({**ranked[0], "top_k": ranked})
    return answers


@blueprint.post("/v1/models/<name>:predict")
def predict(name: str):
    # The request and `g` themselves, not their context-local proxies: every attribute read
    # through a proxy looks the context up again, and this runs on every prediction.
    current, state = request._get_current_object(), g._get_current_object()  # type: ignore[attr-defined]
    config = current_app.config
    options = parse_options(current, config["DEFAULT_TOP_K"], config["MAX_TOP_K"])
    debug = _debug_requested(current.args.get("debug"))
    catalog = _catalog()
    catalog.check_name(name)
    state.model = name
    images = extract_images(current, config["MAX_IMAGES_PER_REQUEST"])
    state.images = len(images)
    metrics.IMAGES_PER_REQUEST.labels(name).observe(len(images))
    check_image_sizes(images, ImageLimits(config["MAX_IMAGE_PIXELS"], config["MAX_IMAGE_SIDE"],
                                          config["MAX_REQUEST_PIXELS"]))
    info = catalog.resolve(name, options.version, options.label)
    started = time.perf_counter()
    batch, framings = _preprocess(images, info)
    state.preprocess_seconds = time.perf_counter() - started
    metrics.PREPROCESS_SECONDS.labels(name).observe(state.preprocess_seconds)
    started = time.perf_counter()
    client, inputs = _client(), {info.input_key: batch}
    try:
        version, outputs = client.predict(name, info.version, inputs, [info.output_key], request_id())
    except ModelNotFoundError:
        if options.version is not None:
            raise
        # The cached latest version was unloaded meanwhile: ask again once.
        catalog.forget(name)
        info = catalog.resolve(name, None, options.label)
        inputs = {info.input_key: batch}
        version, outputs = client.predict(name, info.version, inputs, [info.output_key], request_id())
    state.model_server_seconds = time.perf_counter() - started
    state.version = version
    metrics.MODEL_SERVER_SECONDS.labels(name).observe(state.model_server_seconds)
    probabilities = outputs[info.output_key]
    if len(images) > 1 and (probabilities.ndim == 0 or len(probabilities) != len(images)):
        raise ModelMisconfiguredError(
            f"model '{name}' answered output '{info.output_key}' of shape {list(probabilities.shape)} for "
            f"{len(images)} image(s); the gateway needs one row per image")
    probabilities = probabilities.reshape(len(images), -1)
    current.environ["pixelgate.model"] = (name, version)
    predictions = top_predictions(probabilities, info.classes, options.top_k)
    if debug:
        # What the model saw, so a user can tell a bad crop or a wrong inversion from a bad model.
        for prediction, model_input, framing in zip(predictions, batch, framings, strict=True):
            png = model_input_png(model_input, info.spec)
            prediction["preprocessed"] = base64.b64encode(png).decode("ascii")
            prediction["preprocessing"] = {"mode": info.spec.mode, **framing.as_dict()}
    return jsonify({"model": name, "version": version, "predictions": predictions})


def _debug_requested(value: str | None) -> bool:
    if value is None or value.lower() in ("", "false", "0", "no", "off"):
        return False
    if value.lower() in ("true", "1", "yes", "on"):
        return True
    raise InvalidRequestError(f"'debug' must be true or false, got {value[:32]!r}", code="invalid_debug")


def _preprocess(images: list[bytes], info: ModelInfo) -> tuple[np.ndarray, list[Framing]]:
    try:
        return preprocess_images_explained(images, info.spec, current_app.config["MAX_IMAGE_PIXELS"])
    except GatewayError:
        raise
    except Exception as error:  # noqa: BLE001 - whatever bytes make a decoder fail are the upload's fault
        logger.exception("preprocessing failed on an upload")
        raise InvalidImageError(f"the image could not be decoded ({type(error).__name__})") from None


@blueprint.get("/v1/models")
def list_models():
    catalog = _catalog()

    def look_up(name: str) -> dict:
        try:
            return {**describe(catalog.resolve(name)), "state": "AVAILABLE"}
        except GatewayError as error:
            return {"name": name, "state": "UNAVAILABLE", "error": error.message}

    return jsonify({"models": _for_each_model(catalog.model_names(), look_up)})


@blueprint.get("/v1/models/<name>")
def model_detail(name: str):
    if name.endswith(":predict"):
        raise MethodNotAllowed(valid_methods=["POST"])
    catalog = _catalog()
    catalog.check_name(name)
    g.model = name
    versions = _client().status(name)
    body = {"name": name, "versions": [{"version": v.version, "state": v.state, "error": v.error} for v in versions]}
    if any(v.state == "AVAILABLE" for v in versions):
        body.update(describe(catalog.resolve(name)))
        body["name"] = name
    return jsonify(body)


@blueprint.get("/healthz")
def healthz():
    return jsonify({"status": "ok"})


@blueprint.get("/readyz")
def readyz():
    catalog, client = _catalog(), _client()
    timeout = current_app.config["READINESS_TIMEOUT_SECONDS"]

    def state(name: str) -> str:
        try:
            states = {v.state for v in client.status(name, timeout)}
            answer = "AVAILABLE" if "AVAILABLE" in states else (", ".join(sorted(states)) or "NO_VERSIONS")
            if answer == "AVAILABLE":
                catalog.resolve(name)  # served, but can the gateway feed it? (cached once it can)
            return answer
        except GatewayError as error:
            return f"UNAVAILABLE: {error.message}"

    names = catalog.model_names()
    models = dict(zip(names, _for_each_model(names, state), strict=True))
    ready = bool(names) and all(value == "AVAILABLE" for value in models.values())
    return jsonify({"ready": ready, "models": models}), (200 if ready else 503)
