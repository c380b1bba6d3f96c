"""The model server's request and runtime metrics, named as TensorFlow Serving exports them.

TF Serving's Prometheus page turns `/tensorflow/serving/request_count` into
`:tensorflow:serving:request_count`; the same names, labels, units (microseconds) and
bucket limits are used here, on prometheus_client's default registry, which the REST port's
monitoring page serves (serving/model_server/monitoring.py). Counters keep TF Serving's exact
names (no `_total` suffix, which prometheus_client's Counter would add), so dashboards and
alerts written for TF Serving work unchanged. Batching metrics live in batching.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
from prometheus_client import REGISTRY, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

# monitoring::Buckets::Exponential(10, 1.8, 33): 10 µs up to ~20 minutes (util.cc).
_LATENCY_BUCKETS_USECS = tuple(10 * 1.8**power for power in range(33))
# The calls prediction_service_impl.cc records, by gRPC method; v2's ModelInfer counts as a Predict.
INSTRUMENTED_APIS = {
    "Predict": "Predict",
    "Classify": "Classify",
    "Regress": "Regress",
    "ModelInfer": "Predict",
}

REQUEST_LATENCY = Histogram(
    ":tensorflow:serving:request_latency",
    "Distribution of wall time (in microseconds) for Tensorflow Serving request.",
    ["model_name", "API", "entrypoint"],
    buckets=_LATENCY_BUCKETS_USECS,
)
RUNTIME_LATENCY = Histogram(
    ":tensorflow:serving:runtime_latency",
    "Distribution of wall time (in microseconds) for Tensorflow runtime.",
    ["model_name", "API", "runtime"],
    buckets=_LATENCY_BUCKETS_USECS,
)


class ExactNameCounter:
    """A counter exported under exactly its name, as TF Serving's exporter writes counters."""

    def __init__(self, name: str, documentation: str, label_names: tuple[str, ...] = ()):
        self.name, self.documentation, self.label_names = name, documentation, label_names
        self._values: dict[tuple[str, ...], float] = {}
        self._lock = threading.Lock()

    def increment(self, *label_values: str, amount: float = 1) -> None:
        with self._lock:
            self._values[label_values] = self._values.get(label_values, 0) + amount

    def value(self, *label_values: str) -> float:
        with self._lock:
            return self._values.get(label_values, 0)

    def metric(self) -> Metric:
        # "unknown" is written as TYPE untyped: a "counter" would be renamed NAME_total.
        metric = Metric(self.name, self.documentation, "unknown")
        with self._lock:
            for label_values, value in sorted(self._values.items()):
                metric.add_sample(self.name, dict(zip(self.label_names, label_values, strict=True)), value)
        return metric


REQUEST_COUNT = ExactNameCounter(
    ":tensorflow:serving:request_count", "The total number of requests.", ("model_name", "status")
)
GRAPH_RUNS = ExactNameCounter(
    ":tensorflow:core:graph_runs",
    "The number of graph executions used to collect /tensorflow/core/graph_run_time_usecs",
)
GRAPH_RUN_TIME_USECS = ExactNameCounter(
    ":tensorflow:core:graph_run_time_usecs", "The total time spent on executing graphs in microseconds."
)
LOAD_ATTEMPT_COUNT = ExactNameCounter(
    ":tensorflow:cc:saved_model:load_attempt_count",
    "The number of times a SavedModel was successfully loaded.",
    ("model_path", "status"),
)
LOAD_LATENCY = ExactNameCounter(
    ":tensorflow:cc:saved_model:load_latency",
    "Latency in microseconds for SavedModels that were successfully loaded.",
    ("model_path",),
)
_COUNTERS = (REQUEST_COUNT, GRAPH_RUNS, GRAPH_RUN_TIME_USECS, LOAD_ATTEMPT_COUNT, LOAD_LATENCY)


class _CounterCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        for counter in _COUNTERS:
            yield counter.metric()


REGISTRY.register(_CounterCollector())


def _status_name(code: grpc.StatusCode) -> str:
    return code.name  # error::Code_Name(): "OK", "INVALID_ARGUMENT", "NOT_FOUND", ...


def record_request(model_name: str, api: str, entrypoint: str, code: grpc.StatusCode, seconds: float) -> None:
    """One Predict/Classify/Regress call answered (RecordModelRequestCount + RecordRequestLatency):
    every call is counted by status, the latency of successful ones is recorded."""
    if code == grpc.StatusCode.OK:
        REQUEST_LATENCY.labels(model_name, api, entrypoint).observe(seconds * 1e6)
    REQUEST_COUNT.increment(model_name, _status_name(code))


@contextmanager
def runtime(model_name: str, api: str) -> Iterator[None]:
    """Time a request's session run, through the batching session if any (RecordRuntimeLatency)."""
    started = time.perf_counter()
    yield
    RUNTIME_LATENCY.labels(model_name, api, "TF1").observe((time.perf_counter() - started) * 1e6)


def record_graph_run(seconds: float) -> None:
    """One Session::Run of a graph (TensorFlow's own /tensorflow/core counters)."""
    GRAPH_RUNS.increment()
    GRAPH_RUN_TIME_USECS.increment(amount=round(seconds * 1e6))


def record_load(model_path: str, succeeded: bool, seconds: float) -> None:
    """One SavedModel load attempt (TensorFlow's /tensorflow/cc/saved_model counters)."""
    LOAD_ATTEMPT_COUNT.increment(model_path, "success" if succeeded else "fail")
    if succeeded:
        LOAD_LATENCY.increment(model_path, amount=round(seconds * 1e6))


def observe_rest_request(http_method: str, path: str, answer, seconds: float) -> None:
    """RestApiServer observer: what http_server.cc records for each REST request."""
    if not answer.model_name:
        return
    code = answer.error.code if answer.error is not None else grpc.StatusCode.OK
    record_request(answer.model_name, answer.method or http_method, "REST", code, seconds)
