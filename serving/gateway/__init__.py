"""The pixelgate HTTP gateway: a Flask app factory.

`create_app(config=None)` takes defaults, then environment variables, then `config`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from flask import Flask, Response, g, jsonify, request
from werkzeug.exceptions import HTTPException

from serving.gateway import auth, metrics, openapi, request_hooks
from serving.gateway.backend import ModelCatalog, ModelServerClient, TlsSettings
from serving.gateway.coalescing import Coalescer
from serving.gateway.config import load_config
from serving.gateway.errors import GatewayError
from serving.gateway.requests_parsing import GatewayRequest
from serving.gateway.views import blueprint
from serving.gateway.web import blueprint as web_blueprint

logger = logging.getLogger(__name__)

_HTTP_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405: "method_not_allowed",
               408: "request_timeout", 413: "payload_too_large", 414: "uri_too_long",
               415: "unsupported_media_type", 431: "request_header_fields_too_large"}


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    app = Flask(__name__)
    app.request_class = GatewayRequest  # uploads parsed into memory buffers, not temporary files
    # Werkzeug answers "//" in a path and a missing trailing slash with an HTML redirect,
    # bypassing error handlers; every answer here is JSON, so such paths are plain 404s.
    app.url_map.merge_slashes = False
    app.url_map.strict_slashes = False
    app.config.update(load_config(config))
    app.json.sort_keys = False  # type: ignore[attr-defined]
    coalescer = (
        Coalescer(app.config["MAX_IMAGES_PER_CALL"], app.config["COALESCE_MAX_IN_FLIGHT"])
        if app.config["COALESCE_PREDICTIONS"] else None
    )
    client = ModelServerClient(app.config["MODEL_SERVER"], app.config["REQUEST_TIMEOUT_SECONDS"],
                               TlsSettings.from_config(app.config), coalescer,
                               app.config["MAX_IMAGES_PER_CALL"])
    names = [n.strip() for n in app.config["MODELS"].split(",") if n.strip()]
    app.extensions["pixelgate.client"] = client
    app.extensions["pixelgate.catalog"] = ModelCatalog(
        client, app.config["MODEL_BASE_PATH"], names, app.config["METADATA_TTL_SECONDS"]
    )
    app.register_blueprint(blueprint)
    app.register_blueprint(openapi.blueprint)  # /openapi.json and /docs
    app.register_blueprint(web_blueprint)  # the try-it page at /
    _register_error_handlers(app)
    request_hooks.register(app, auth.from_config(app.config))

    @app.get("/metrics")
    def prometheus_metrics():
        body, content_type = metrics.render()
        return Response(body, content_type=content_type)

    return app


def _error(message: str, code: str, status: int, headers: list[tuple[str, str]] | None = None):
    g.error_code = code
    return jsonify({"error": message, "code": code}), status, headers or []


def _register_error_handlers(app: Flask) -> None:
    @app.errorhandler(GatewayError)
    def gateway_error(error: GatewayError):
        return _error(error.message, error.code, error.status)

    @app.errorhandler(HTTPException)
    def http_error(error: HTTPException):
        status = error.code or 500
        limit = app.config["MAX_CONTENT_LENGTH"]
        if status == 413 and (request.content_length is None or request.content_length > limit):
            return _error(f"the request body is larger than {limit} bytes", "payload_too_large", 413)
        headers = [(key, value) for key, value in error.get_headers() if key.lower() != "content-type"]
        return _error(error.description or error.name, _HTTP_CODES.get(status, error.name.lower().replace(" ", "_")),
                      status, headers)

    @app.errorhandler(Exception)
    def unexpected_error(error: Exception):
        logger.exception("unexpected error on %s %s", request.method, request.path)
        return _error("internal error; the gateway's log has the details", "internal_error", 500)
