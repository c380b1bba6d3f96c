"""Prometheus metrics of the gateway. Under gunicorn, set PROMETHEUS_MULTIPROC_DIR so that
/metrics adds up every worker (prometheus-client's multiprocess mode).

Label values are bounded: `model` is set only for names the catalog knows, `endpoint` is
the URL rule, never the raw path, so hostile URLs cannot grow the series without end.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_BYTES_BUCKETS = tuple(float(1024 * 4**power) for power in range(9))  # 1 KiB .. 64 MiB
_IMAGES_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

REQUESTS = Counter(
    "pixelgate_requests_total", "HTTP requests answered", ["endpoint", "model", "status", "version"]
)
LATENCY = Histogram(
    "pixelgate_request_seconds", "Whole request latency", ["endpoint"], buckets=_LATENCY_BUCKETS
)
PREPROCESS_SECONDS = Histogram(
    "pixelgate_preprocess_seconds", "Decode and preprocessing time", ["model"], buckets=_LATENCY_BUCKETS
)
MODEL_SERVER_SECONDS = Histogram(
    "pixelgate_model_server_seconds", "Model-server Predict call time", ["model"], buckets=_LATENCY_BUCKETS
)
IN_FLIGHT = Gauge(
    "pixelgate_requests_in_flight", "HTTP requests being answered now", multiprocess_mode="livesum"
)
REQUEST_BYTES = Histogram(
    "pixelgate_request_bytes", "Request body size", ["endpoint"], buckets=_BYTES_BUCKETS
)
IMAGES_PER_REQUEST = Histogram(
    "pixelgate_images_per_request", "Images in one predict request", ["model"], buckets=_IMAGES_BUCKETS
)
MODEL_SERVER_BATCH_IMAGES = Histogram(
    "pixelgate_model_server_batch_images",
    "Images in one Predict call to the model server (concurrent requests share calls)",
    ["model"],
    buckets=_IMAGES_BUCKETS,
)
MODEL_SERVER_ERRORS = Counter(
    "pixelgate_model_server_errors_total",
    "Model-server calls that failed, by gRPC code (a shared Predict call once, whatever number of "
    "requests it carried)",
    ["method", "code"],
)


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
