"""The failover counter reads gRPC's channelz after each model-server call (model_server_client.py):
reading it must never cost the call its answer. A real model server in this process, a real channel."""

from __future__ import annotations

import json
import time
from concurrent import futures

import grpc
import numpy as np
import pytest
from grpc._cython import cygrpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from serving.gateway import model_server_client
from serving.gateway.channel import create_channel, failed_attempts
from serving.gateway.model_server_client import ModelServerClient, PredictCall
from serving.model_server.config import build_single_model_config
from serving.model_server.options import ServerOptions
from serving.model_server.server import create_server


@pytest.fixture(scope="module")
def model_server_port(tmp_path_factory):
    from tests.model_fixtures.keras_classifier import export_test_model

    base_path = tmp_path_factory.mktemp("models") / "toy"
    export_test_model(base_path / "1")
    server, port = create_server("127.0.0.1:0", build_single_model_config("toy", str(base_path)),
                                 ServerOptions(file_system_poll_wait_seconds=0, enable_model_warmup=False))
    server.start()
    yield port
    server.stop(0)


def test_a_subchannel_gone_while_channelz_is_read_costs_the_call_nothing(model_server_port, monkeypatch):
    """A replica's subchannel goes when DNS stops naming it (a pod replaced) or its channel closes; when
    that falls between channelz's listing and the lookup of that subchannel, the lookup fails."""
    target = f"ipv4:127.0.0.1:{model_server_port}"
    client = ModelServerClient(target, timeout=10)
    # Another channel to the same target, with a subchannel of its own (other arguments: not shared).
    other = grpc.insecure_channel(target, options=[("pixelgate.test.other", 1)])
    grpc.channel_ready_future(other).result(timeout=10)
    list_channels = cygrpc.channelz_get_top_channels

    def listed_then_gone(start: int) -> bytes:
        page = list_channels(start)
        other.close()  # its subchannel goes now, after the listing that names it
        deadline = time.monotonic() + 10
        while b'"subchannelRef"' in page and time.monotonic() < deadline:
            try:
                for reference in _subchannel_ids(page):
                    cygrpc.channelz_get_subchannel(reference)
            except ValueError:
                return page
            time.sleep(0.05)
        raise AssertionError("the closed channel's subchannel is still there")

    monkeypatch.setattr(cygrpc, "channelz_get_top_channels", listed_then_gone)
    monkeypatch.setattr(model_server_client, "_FAILOVER_READING_SECONDS", 0.0)  # read after this call
    try:
        call = PredictCall("toy", 1, "images", ("probabilities",), np.zeros((1, 28, 28, 1), np.float32))
        answer = client.send(call, time.monotonic() + 10)
        assert answer.version == 1 and answer.outputs["probabilities"].shape == (1, 10)
    finally:
        client.close()


def _subchannel_ids(page: bytes) -> list[int]:
    return [int(reference["subchannelId"]) for channel in json.loads(page).get("channel", [])
            for reference in channel.get("subchannelRef", [])]


@pytest.mark.parametrize("scheme", ["", "ipv4:"])
def test_a_lost_replica_connection_is_counted_whatever_form_the_target_has(scheme):
    """channelz names a channel to `host:port` (no scheme: gRPC's dns resolver) `dns:///host:port`; the
    counter reads the channels to MODEL_SERVER, whichever way it is written. The lost connection's
    health-check stream is the failure both count (channel.py)."""
    server = grpc.server(futures.ThreadPoolExecutor(2))
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    target = f"{scheme}127.0.0.1:{port}"
    channel = create_channel(target)
    try:
        health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert failed_attempts(target) == 0
        server.stop(0).wait()
        deadline = time.monotonic() + 30
        while failed_attempts(target) == 0:
            assert time.monotonic() < deadline, f"the lost connection to {target} was not counted"
            time.sleep(0.1)
    finally:
        channel.close()
