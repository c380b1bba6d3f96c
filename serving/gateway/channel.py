"""The gRPC channel to the model server: one per process, plain or TLS (mutual with cert + key).

MODEL_SERVER is a gRPC target: `host:port`, or several replicas (`ipv4:10.0.0.1:8500,10.0.0.2:8500`,
`dns:///tfserving-headless:8500`). gRPC's own round_robin spreads the calls over the replicas that
pass its health check, and its retry policy sends a call that met a dead replica to another one.
"""

from __future__ import annotations

import ipaddress
import json
import re
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
    ("grpc.enable_retries", 1),
    # A call larger than this buffer is committed at once and never retried: room for 512 CIFAR images.
    ("grpc.per_rpc_retry_buffer_size", 8 * 1024 * 1024),
    # This service config, never one from DNS TXT records.
    ("grpc.service_config_disable_resolution", 1),
]
# Per call, not per connection: round_robin over every address the target resolves to, each replica
# only while it answers grpc.health.v1 SERVING for "" (the whole server: the embedded model server and
# TF Serving with --enable_grpc_healthcheck_service both do; a server without the health service is
# used as healthy, gRPC's rule for UNIMPLEMENTED). A call that fails UNAVAILABLE (its replica died or
# refused it) is retried after a jittered backoff, on the next replica, within its own deadline: every
# model-server call is idempotent. The retry throttle stops retrying once most attempts fail (every
# replica down), so a call then fails at once instead of multiplying the load.
SERVICE_CONFIG = {
    "loadBalancingConfig": [{"round_robin": {}}],
    "healthCheckConfig": {"serviceName": ""},
    "methodConfig": [{
        "name": [{}],
        "retryPolicy": {
            "maxAttempts": 5,  # gRPC's upper limit
            "initialBackoff": "0.05s",
            "maxBackoff": "1s",
            "backoffMultiplier": 2,
            "retryableStatusCodes": ["UNAVAILABLE"],
        },
    }],
    "retryThrottling": {"maxTokens": 100, "tokenRatio": 0.1},
}
_SCHEMES = ("dns", "ipv4", "ipv6", "unix", "unix-abstract")
_HOST_PORT = re.compile(r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.-]+)(?::(?P<port>[0-9]+))?")


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


def check_target(target: str) -> str:
    """`target` if gRPC can resolve it; a ValueError naming MODEL_SERVER otherwise (gRPC itself would
    only fail each call, UNAVAILABLE)."""
    scheme, colon, rest = target.partition(":")
    try:
        if not colon or scheme not in _SCHEMES:  # host:port, gRPC's dns resolver
            _check_host_port(target, port_required=False)
        elif scheme == "dns":  # dns:host[:port] or dns://[dns server]/host[:port]
            _check_host_port(rest.removeprefix("//").partition("/")[2] if rest.startswith("//") else rest,
                             port_required=False)
        elif scheme in ("ipv4", "ipv6"):
            for address in rest.split(","):
                ipaddress.ip_address(_check_host_port(address, port_required=True).strip("[]"))
        elif not rest:  # unix:path, unix-abstract:name
            raise ValueError("no path")
    except ValueError as error:
        raise ValueError(f"MODEL_SERVER={target!r} is not a gRPC target ({error}): give host:port, "
                         "ipv4:host:port,host:port,... or dns:///name:port") from None
    return target


def _check_host_port(text: str, port_required: bool) -> str:
    match = _HOST_PORT.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not host:port")
    port = match["port"]
    if port is None and port_required or port is not None and not 0 < int(port) < 65536:
        raise ValueError(f"{text!r} has no valid port")
    return match["host"]


def create_channel(target: str, tls: TlsSettings | None = None) -> grpc.Channel:
    check_target(target)
    options = [*_CHANNEL_OPTIONS, ("grpc.service_config", json.dumps(SERVICE_CONFIG))]
    if tls is None:
        return grpc.insecure_channel(target, options=options)
    if tls.server_name:
        options.append(("grpc.ssl_target_name_override", tls.server_name))
    elif "," in target:  # gRPC would check each certificate against the whole list, and refuse it
        raise ValueError(f"MODEL_SERVER={target!r} lists several model servers: with TLS, give "
                         "MODEL_SERVER_TLS_SERVER_NAME, the name their certificates carry")
    return grpc.secure_channel(target, tls.credentials(), options=options)


def failed_attempts(target: str) -> int:
    """Attempts that failed on a replica without failing their call (gRPC retried them), summed over
    this process's channels to `target`; gRPC reports retries to no one else, so this reads its
    channelz counters: failed calls of the replicas' subchannels less failed calls of the channels.

    A replica connection lost adds one or two: its health-check stream fails, and may fail again once
    restarted before gRPC sees the connection is gone."""
    from grpc._cython import cygrpc  # channelz, as the grpcio-channelz service reads it

    # channelz names a channel by its target as gRPC parsed it: `host:port` (no scheme) is dns:///host:port.
    scheme, colon, _ = target.partition(":")
    named = {target, target if colon and scheme in _SCHEMES else f"dns:///{target}"}
    channels, start = [], 0
    while True:
        page = json.loads(cygrpc.channelz_get_top_channels(start))
        channels += [channel for channel in page.get("channel", [])
                     if channel["data"].get("target") in named]
        if page.get("end", True) or not page.get("channel"):
            break
        start = int(page["channel"][-1]["ref"]["channelId"]) + 1
    failed = 0
    for channel in channels:
        failed -= int(channel["data"].get("callsFailed", 0))
        for reference in channel.get("subchannelRef", []):
            try:
                subchannel = json.loads(cygrpc.channelz_get_subchannel(int(reference["subchannelId"])))
            except ValueError:  # gone since the listing (its replica left DNS, its channel closed)
                continue
            failed += int(subchannel["subchannel"]["data"].get("callsFailed", 0))
    return failed
