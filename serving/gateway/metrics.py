"""Prometheus metrics of the gateway. Under gunicorn, set PROMETHEUS_MULTIPROC_DIR so that
/metrics adds up every worker (prometheus-client's multiprocess mode).

Label values are bounded: `model` is set only for names the catalog knows, `endpoint` is
the URL rule, never the raw path, so hostile URLs cannot grow the series without end.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
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
# Fisher's method on C components scores in-distribution images about C on average (never below 0;
# a lone standardized component can be); thresholds for a 5 % flag rate sit between 4 and 9 for 2 to
# 4 components, so the buckets are finest there. An empty frame scores 1,000 above the rest.
_OOD_SCORE_BUCKETS = (-1.0, 0.0, 1.0, 2.0, 3.0, 4.0, 4.5, 5.0, 5.5, 6.0, 7.0, 8.0, 9.0, 10.0, 12.5, 15.0,
                      20.0, 30.0, 50.0, 100.0)
_FRACTION_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.125, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6,
                     0.7, 0.8, 0.9, 1.0)
FOREGROUND_LEVEL = 0.5  # a model-input pixel above this counts as foreground (of [0, 1])
ADJUSTMENTS = ("inverted", "cropped")

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
MODEL_SERVER_FAILOVERS = Counter(
    "pixelgate_model_server_failovers_total",
    "Model-server calls that failed on one replica and were retried on another by gRPC (the gateway's "
    "call did not fail); a replica connection lost adds one or two (its health-check stream)",
)

OUT_OF_DISTRIBUTION_IMAGES = Counter(
    "pixelgate_out_of_distribution_images_total",
    "Images whose ood_score was above their model version's threshold (in_distribution: false)",
    ["model"],
)
OOD_SCORE = Histogram(
    "pixelgate_ood_score", "Out-of-distribution score of each image (versions that answer one)", ["model"],
    buckets=_OOD_SCORE_BUCKETS,
)
INPUT_MEAN_INTENSITY = Histogram(
    "pixelgate_input_mean_intensity", "Mean pixel value of each model input, in [0, 1]", ["model"],
    buckets=_FRACTION_BUCKETS,
)
INPUT_FOREGROUND_FRACTION = Histogram(
    "pixelgate_input_foreground_fraction",
    f"Share of each model input's pixels above {FOREGROUND_LEVEL} (the content of light-on-dark data sets)",
    ["model"],
    buckets=_FRACTION_BUCKETS,
)
PREPROCESSING_ADJUSTMENTS = Counter(
    "pixelgate_preprocessing_adjustments_total",
    "Uploads that normalization inverted (a light background) or cropped to their content or a square",
    ["model", "adjustment"],
)


def observe_inputs(model: str, batch: np.ndarray, inverted: Sequence[bool], cropped: Sequence[bool]) -> None:
    """Drift statistics of one request's model inputs (float32 [N, H, W, C] in [0, 1])."""
    flat = batch.reshape(len(batch), -1)
    means = flat.mean(axis=1, dtype=np.float64).tolist()
    foreground = (np.count_nonzero(flat > FOREGROUND_LEVEL, axis=1) / max(flat.shape[1], 1)).tolist()
    intensity, fraction = INPUT_MEAN_INTENSITY.labels(model), INPUT_FOREGROUND_FRACTION.labels(model)
    for mean, share in zip(means, foreground, strict=True):
        intensity.observe(mean)
        fraction.observe(share)
    # Every series exists from a model's first request on, at 0 until something happens: its rate is
    # 0, not absent.
    PREPROCESSING_ADJUSTMENTS.labels(model, "inverted").inc(sum(inverted))
    PREPROCESSING_ADJUSTMENTS.labels(model, "cropped").inc(sum(cropped))


def observe_ood(model: str, scores: Sequence[float | None], in_distribution: Sequence[bool | None]) -> None:
    histogram = OOD_SCORE.labels(model)
    for score in scores:
        if score is not None:
            histogram.observe(score)
    OUT_OF_DISTRIBUTION_IMAGES.labels(model).inc(sum(flag is False for flag in in_distribution))


def render() -> tuple[bytes, str]:
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST
