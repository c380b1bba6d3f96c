"""The gateway's settings, all of them: documented defaults, overridden by environment variables
of the same name, then by a mapping (a test's). The app, the gunicorn config, the HTTP worker and
logging read them here; a value that does not parse is a ValueError that names the variable.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

DEFAULTS: dict[str, Any] = {
    "MODEL_SERVER": "localhost:8500",  # gRPC target of the TF Serving API: host:port, ipv4:a,b, dns:///name
    "MODEL_BASE_PATH": "./models",  # where models' assets (labels, preprocessing spec) are read
    "MODELS": "",  # comma-separated model names; empty = MODEL_CONFIG_FILE's, else every model folder
    # A TF Serving model config (the model server's --model_config_file): the models it lists,
    # re-read every METADATA_TTL_SECONDS, so a model added there is served without a restart.
    "MODEL_CONFIG_FILE": "",
    "REQUEST_TIMEOUT_SECONDS": 10.0,  # deadline of each model-server call
    "READINESS_TIMEOUT_SECONDS": 2.0,  # deadline of /readyz's status calls: a probe must answer fast
    "MAX_CONTENT_LENGTH": 20 * 1024 * 1024,  # bytes per request body (413 beyond)
    "MAX_IMAGES_PER_REQUEST": 64,
    # Images in one explain=true request (400 too_many_images_to_explain beyond): an explanation
    # costs the model server a forward and a backward pass per image (more with integrated gradients).
    "MAX_IMAGES_PER_EXPLAIN": 8,
    # Images in one Predict call, shared or not: a request with more is sent as several calls at
    # once. Keep it <= the execution batch size (a batching model server without large-batch
    # splitting refuses a call over its max_batch_size).
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
    "LOG_LEVEL": "INFO",
    # The gunicorn process (serving/gunicorn.conf.py and serving/gateway/http_worker.py):
    "GATEWAY_HOST": "0.0.0.0",
    "GATEWAY_PORT": 8000,
    "GATEWAY_WORKERS": len(os.sched_getaffinity(0)),  # one per core it may use: decoding holds the GIL
    # Threads per worker: most of a request's time is the wait on the model server, and SO_REUSEPORT
    # may hand one worker more connections than the other. At concurrency 32, 32 answered 1-14 % more
    # requests/s than 16 in 7 of 7 paired runs, as many at 16 (docs/benchmarks.md, 2026-12-07).
    "GATEWAY_THREADS": 32,
    "GATEWAY_REUSE_PORT": True,  # a SO_REUSEPORT socket per worker; false: one socket shared by all
    "GATEWAY_WORKER_TIMEOUT": 30,
    "GATEWAY_GRACEFUL_TIMEOUT": 20,
    "GATEWAY_BODY_TIMEOUT_SECONDS": 30.0,  # a request's whole body must arrive within this
}

# 0 or less would refuse every request (or image, or body), or answer a nonsense error for each.
_POSITIVE = frozenset({
    "GATEWAY_BODY_TIMEOUT_SECONDS", "REQUEST_TIMEOUT_SECONDS", "READINESS_TIMEOUT_SECONDS",
    "MAX_CONTENT_LENGTH", "MAX_IMAGES_PER_REQUEST", "MAX_IMAGES_PER_EXPLAIN", "MAX_IMAGES_PER_CALL",
    "MAX_IMAGE_PIXELS", "MAX_IMAGE_SIDE", "MAX_REQUEST_PIXELS", "MAX_TOP_K", "DEFAULT_TOP_K",
    "COALESCE_MAX_IN_FLIGHT",
})
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def parse_boolean(text: str) -> bool:
    """true/false, 1/0, yes/no, on/off (any case; empty is false); anything else is a ValueError."""
    value = text.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ValueError(f"{text[:32]!r} is not a boolean (true/false)")


def _convert(key: str, text: str, kind: type) -> Any:
    try:
        value = parse_boolean(text) if kind is bool else kind(text)
    except ValueError:
        raise ValueError(f"environment variable {key}={text!r} is not a valid {kind.__name__}") from None
    _check_positive(key, value, f"environment variable {key}={text!r}")
    return value


def _check_positive(key: str, value: Any, shown: str) -> None:
    if key in _POSITIVE and isinstance(value, (int, float)) and not value > 0:
        raise ValueError(f"{shown} must be greater than zero")


def load_config(overrides: Mapping[str, Any] | None = None,
                environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Defaults, then environment variables of the same name, then `overrides`."""
    environ = os.environ if environ is None else environ
    config = dict(DEFAULTS)
    for key, default in DEFAULTS.items():
        if key in environ:
            config[key] = _convert(key, environ[key], type(default))
    config.update(overrides or {})
    for key, value in (overrides or {}).items():  # a test's or an embedder's values, not parsed above
        _check_positive(key, value, f"setting {key}={value!r}")
    if config["DEFAULT_TOP_K"] > config["MAX_TOP_K"]:  # every request without top_k would answer a 400
        raise ValueError(f"DEFAULT_TOP_K={config['DEFAULT_TOP_K']} is above MAX_TOP_K={config['MAX_TOP_K']}")
    return config
