"""`--monitoring_config_file`: where the REST port serves Prometheus metrics, if anywhere.

The same text-format MonitoringConfig TF Serving reads (`prometheus_config { enable: true
path: "/monitoring/prometheus/metrics" }`), with its errors; the page is
prometheus_client's default registry, where the model server's metrics live.
"""

from __future__ import annotations

from serving.config.monitoring_config_pb2 import MonitoringConfig
from serving.model_server.text_proto import read_text_proto

DEFAULT_PROMETHEUS_PATH = "/monitoring/prometheus/metrics"  # PrometheusExporter::kPrometheusPath


def read_monitoring_config(path: str) -> MonitoringConfig:
    """ParseProtoTextFile<MonitoringConfig>(): NOT_FOUND if unreadable, INVALID_ARGUMENT if malformed."""
    if not path:
        return MonitoringConfig()
    return read_text_proto(path, MonitoringConfig(), "tensorflow.serving.MonitoringConfig")


def prometheus_path(config: MonitoringConfig) -> str | None:
    """The path metrics are served on, or None when Prometheus export is off."""
    if not config.prometheus_config.enable:
        return None
    return config.prometheus_config.path or DEFAULT_PROMETHEUS_PATH


def prometheus_page() -> tuple[bytes, str]:
    """The metrics page and its content type."""
    from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

    return generate_latest(REGISTRY), CONTENT_TYPE_LATEST
