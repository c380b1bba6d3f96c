"""The gRPC channel to the model server: one per process, plain or TLS (mutual with cert + key)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

_CHANNEL_OPTIONS: list[tuple[str, Any]] = [
    ("grpc.max_send_message_length", 256 * 1024 * 1024),
    ("grpc.max_receive_message_length", 256 * 1024 * 1024),
    ("grpc.keepalive_time_ms", 30_000),
    # gRPC's default backoff grows to 120 s between reconnection attempts: a model server
    # that restarts would then stay unused for up to two minutes. Retry within a second or two.
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2_000),
]


@dataclass(frozen=True)
class TlsSettings:
    """TLS to the model server; `ca` empty means the system's CAs; cert + key for mutual TLS."""

    ca: str = ""
    cert: str = ""
    key: str = ""
    server_name: str = ""

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TlsSettings | None:
        if not (config.get("MODEL_SERVER_TLS") or config.get("MODEL_SERVER_TLS_CA")):
            return None
        if bool(config.get("MODEL_SERVER_TLS_CERT")) != bool(config.get("MODEL_SERVER_TLS_KEY")):
            raise ValueError("MODEL_SERVER_TLS_CERT and MODEL_SERVER_TLS_KEY must be given together")
        return cls(config.get("MODEL_SERVER_TLS_CA", ""), config.get("MODEL_SERVER_TLS_CERT", ""),
                   config.get("MODEL_SERVER_TLS_KEY", ""), config.get("MODEL_SERVER_TLS_SERVER_NAME", ""))

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(_read(self.ca), _read(self.key), _read(self.cert))


def _read(path: str) -> bytes | None:
    try:
        return Path(path).read_bytes() if path else None
    except OSError as error:
        raise ValueError(f"cannot read TLS file {path}: {error}") from error


def create_channel(target: str, tls: TlsSettings | None = None) -> grpc.Channel:
    if tls is None:
        return grpc.insecure_channel(target, options=_CHANNEL_OPTIONS)
    options = list(_CHANNEL_OPTIONS)
    if tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    return grpc.secure_channel(target, tls.credentials(), options=options)
