"""The pixelgate HTTP gateway: a Flask app factory.

`create_app(config=None)` takes defaults, then environment variables, then `config` (config.py).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from serving.gateway import auth, metrics, openapi, request_hooks
from serving.gateway.call_planner import CallPlanner
from serving.gateway.catalog import ModelCatalog
from serving.gateway.channel import TlsSettings
from serving.gateway.config import load_config
from serving.gateway.core import Gateway
from serving.gateway.errors import CODE_BY_HTTP_STATUS, GatewayError
from serving.gateway.model_server_client import ModelServerClient
from serving.gateway.requests_parsing import GatewayRequest
from serving.gateway.views import blueprint
from serving.gateway.web import blueprint as web_blueprint

__all__ = ["create_app"]

logger = logging.getLogger(__name__)

ErrorAnswer = tuple[Response, int, list[tuple[str, str]]]


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.request_class = GatewayRequest  # uploads parsed into memory buffers, not temporary files
    # Werkzeug answers "//" in a path and a missing trailing slash with an HTML redirect,
    # bypassing error handlers; every answer here is JSON, so such paths are plain 404s.
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    app.config.update(load_config(config))
    app.json.sort_keys = False  # type: ignore[attr-defined]
    settings = app.config
    client = ModelServerClient(settings["MODEL_SERVER"], settings["REQUEST_TIMEOUT_SECONDS"],
                               TlsSettings.from_config(settings))
    planner = CallPlanner(client, settings["MAX_IMAGES_PER_CALL"], settings["COALESCE_PREDICTIONS"],
                          settings["COALESCE_MAX_IN_FLIGHT"])
    names = [n.strip() for n in settings["MODELS"].split(",") if n.strip()]
    catalog = ModelCatalog(client, settings["MODEL_BASE_PATH"], names, settings["METADATA_TTL_SECONDS"],
                           settings["MODEL_CONFIG_FILE"])
    app.extensions["pixelgate.gateway"] = Gateway(settings, catalog, planner, client)
    app.register_blueprint(blueprint)
    app.register_blueprint(openapi.blueprint)  # /openapi.json and /docs
    app.register_blueprint(web_blueprint)  # the try-it page at /
    _register_error_handlers(app)
    request_hooks.register(app, auth.from_config(settings))

    @app.get("/metrics")
    def prometheus_metrics() -> Response:
        body, content_type = metrics.render()
        return Response(body, content_type=content_type)

    return app


def _error(message: str, code: str, status: int, headers: list[tuple[str, str]] | None = None) -> ErrorAnswer:
    g.error_code = code
    return jsonify({"error": message, "code": code}), status, headers or []


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(GatewayError)
    def gateway_error(error: GatewayError) -> ErrorAnswer:
        return _error(error.message, error.code, error.status)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException) -> ErrorAnswer:
        status = error.code or 500
        limit = app.config["MAX_CONTENT_LENGTH"]
        if status == 413 and (request.content_length is None or request.content_length > limit):
            return _error(f"the request body is larger than {limit} bytes", "payload_too_large", 413)
        headers = [(key, value) for key, value in error.get_headers() if key.lower() != "content-type"]
        code = CODE_BY_HTTP_STATUS.get(status, error.name.lower().replace(" ", "_"))
        return _error(error.description or error.name, code, status, headers)

    @app.errorhandler(Exception)
    def unexpected_error(error: Exception) -> ErrorAnswer:
        logger.exception("unexpected error on %s %s", request.method, request.path)
        return _error("internal error; the gateway's log has the details", "internal_error", 500)
