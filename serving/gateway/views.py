"""HTTP endpoints: parse the request, call the gateway core (core.py), answer JSON."""

from __future__ import annotations

from flask import Blueprint, Response, current_app, g, jsonify, request
from werkzeug.exceptions import MethodNotAllowed

from serving.gateway.core import Gateway, RequestTrace
from serving.gateway.requests_parsing import extract_images, parse_options

blueprint = Blueprint("gateway", __name__)


def _gateway() -> Gateway:
    gateway: Gateway = current_app.extensions["pixelgate.gateway"]
    return gateway


def _trace() -> RequestTrace:
    trace: RequestTrace = g.trace
    return trace


@blueprint.post("/v1/models/<name>:predict")
def predict(name: str) -> Response:
    # The request itself, not its context-local proxy, which looks the context up again on
    # every attribute read.
    current = request._get_current_object()  # type: ignore[attr-defined]
    config, gateway, trace = current_app.config, _gateway(), _trace()
    options = parse_options(current, config["DEFAULT_TOP_K"], config["MAX_TOP_K"])
    gateway.check_model(name)  # an unknown model is a 404 whatever its body
    trace.model = name
    images = extract_images(current, config["MAX_IMAGES_PER_REQUEST"])
    return jsonify(gateway.predict(name, images, options, g.request_id, trace))


@blueprint.get("/v1/models")
def list_models() -> Response:
    return jsonify({"models": _gateway().list_models()})


@blueprint.get("/v1/models/<name>")
def model_detail(name: str) -> Response:
    if name.endswith(":predict"):
        raise MethodNotAllowed(valid_methods=["POST"])
    gateway = _gateway()
    gateway.check_model(name)
    _trace().model = name
    return jsonify(gateway.model_detail(name))


@blueprint.get("/healthz")
def healthz() -> Response:
    return jsonify({"status": "ok"})


@blueprint.get("/readyz")
def readyz() -> tuple[Response, int]:
    ready, models = _gateway().readiness()
    return jsonify({"ready": ready, "models": models}), (200 if ready else 503)
