"""Gateway settings: documented defaults, overridden by environment variables, then by a test mapping."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

DEFAULTS: dict[str, Any] = {
    "MODEL_SERVER": "localhost:8500",  # host:port of the TF Serving gRPC API
    "MODEL_BASE_PATH": "./models",  # where models' assets (labels, preprocessing spec) are read
    "MODELS": "",  # comma-separated model names; empty = every model under MODEL_BASE_PATH
    "REQUEST_TIMEOUT_SECONDS": 10.0,  # deadline of each model-server call
    "READINESS_TIMEOUT_SECONDS": 2.0,  # deadline of /readyz's status calls: a probe must answer fast
    "MAX_CONTENT_LENGTH": 20 * 1024 * 1024,  # bytes per request body (413 beyond)
    "MAX_IMAGES_PER_REQUEST": 64,
    # Images in one Predict call, shared or not; keep <= the model server's max_batch_size, which
    # refuses a larger call: a request with more images is sent as several calls at once.
    "MAX_IMAGES_PER_CALL": 32,
    "MAX_IMAGE_PIXELS": 40_000_000,  # per decoded image: guards against decompression bombs
    "MAX_IMAGE_SIDE": 20_000,  # per image side, in pixels
    "MAX_REQUEST_PIXELS": 200_000_000,  # all images of one request together: bounds its decoding time
    "MAX_TOP_K": 10,
    "DEFAULT_TOP_K": 3,
    "METADATA_TTL_SECONDS": 2.0,  # how long a resolved "latest version" is reused
    # Concurrent predictions of one model version share Predict calls (group commit, no timer):
    "COALESCE_PREDICTIONS": True,
    "COALESCE_MAX_IN_FLIGHT": 1,  # shared calls per model version and worker at once
    "GATEWAY_TOKENS": "",  # comma-separated bearer tokens; with GATEWAY_TOKENS_FILE empty too, no auth
    "GATEWAY_TOKENS_FILE": "",  # file with one bearer token per line ('#' comments), re-read when it changes
    "MODEL_SERVER_TLS": False,  # TLS to the model server, verified against the system's CAs
    "MODEL_SERVER_TLS_CA": "",  # PEM file of the CA that signed the model server's certificate (implies TLS)
    "MODEL_SERVER_TLS_CERT": "",  # PEM client certificate, when the model server verifies clients
    "MODEL_SERVER_TLS_KEY": "",  # PEM key of that certificate
    "MODEL_SERVER_TLS_SERVER_NAME": "",  # name to expect in the server's certificate, if not the host's
    "LOG_FORMAT": "json",  # "json" (one object per line) or "text"
}

_TYPES = {key: type(value) for key, value in DEFAULTS.items()}
_BOOLEANS = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
    "": False,
}


def _convert(key: str, text: str, kind: type) -> Any:
    if kind is bool:
        if text.strip().lower() not in _BOOLEANS:
            raise ValueError(f"environment variable {key}={text!r} is not a boolean (true/false)")
        return _BOOLEANS[text.strip().lower()]
    try:
        return kind(text)
    except ValueError as error:
        raise ValueError(f"environment variable {key}={text!r} is not a valid {kind.__name__}") from error


def load_config(overrides: Mapping[str, Any] | None = None, environ: Mapping[str, str] | None = None) -> dict:
    """Defaults, then environment variables of the same name, then `overrides`."""
    environ = os.environ if environ is None else environ
    config = dict(DEFAULTS)
    for key, kind in _TYPES.items():
        if key in environ:
            config[key] = _convert(key, environ[key], kind)
    config.update(overrides or {})
    return config
