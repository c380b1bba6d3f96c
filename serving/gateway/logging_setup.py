"""Logging for the gateway process: one JSON object per line (LOG_FORMAT=json, the default) or text.

Fields passed with `extra={"fields": {...}}` become keys of the object, so a request's
line carries its id, model, version, status and timings as data a log pipeline can query.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime

from serving.gateway.config import load_config

_RESERVED = frozenset(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update(fields)
        for key, value in record.__dict__.items():
            if key not in _RESERVED and key != "fields" and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            text += " " + " ".join(f"{key}={value}" for key, value in fields.items())
        return text


def configure_logging(log_format: str | None = None, level: str | None = None) -> None:
    """Configure the root logger once per process (an entry point calls this); LOG_FORMAT and
    LOG_LEVEL from the settings unless given."""
    settings = load_config()
    log_format = (log_format or settings["LOG_FORMAT"]).lower()
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel((level or settings["LOG_LEVEL"]).upper())
