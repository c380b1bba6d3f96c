"""Several model servers behind one gateway (MODEL_SERVER=ipv4:a,b): gRPC's round_robin spreads the
calls over both, its retry policy hides a replica's death, and a replica that comes back on its port
gets calls again. Real model servers and a real gateway on loopback, under a real load of predicts;
each model server's own Prometheus page says how many calls it answered. TLS to several needs the
name their certificates share."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
import requests
from cryptography.x509.oid import ExtendedKeyUsageOID
from prometheus_client.parser import text_string_to_metric_families

from serving import stack
from serving.model_server.config import build_single_model_config
from serving.model_server.options import ServerOptions
from serving.model_server.server import create_server
from tests.conftest import ROOT, encode
from tests.gateway_stack import GatewayProcess, LoadLoop, ModelServerProcess
from tests.test_gateway_tls import Pki, _gateway, _predict_status, _ssl_config

METRICS_PATH = "/monitoring/prometheus/metrics"
MONITORING = ROOT / "serving" / "config" / "monitoring.config"
ANSWERED = ":tensorflow:serving:request_count"  # TF Serving's name: calls answered, by model and status
FAILOVERS = "pixelgate_model_server_failovers_total"
LOAD_THREADS = 8


def sample(url: str, name: str, **labels: str) -> float:
    """One sample of the Prometheus page at `url` (0 while the series does not exist yet)."""
    text = requests.get(url, timeout=10).text
    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return found.value
    return 0.0


class Replica(ModelServerProcess):
    """A model server with its Prometheus page on a REST port of its own, kept across restarts."""

    def __init__(self, config_file, log_dir):
        self.rest_port = stack.free_port()
        super().__init__(config_file, log_dir, flags=(
            "--file_system_poll_wait_seconds=0", f"--rest_api_port={self.rest_port}",
            f"--monitoring_config_file={MONITORING}"))

    def answered(self) -> float:
        return sample(f"http://127.0.0.1:{self.rest_port}{METRICS_PATH}", ANSWERED, model_name="mnist",
                      status="OK")


@pytest.fixture(scope="module")
def replicas(models_dir, tmp_path_factory):
    """Two model servers of the session's tiny mnist model, and a gateway using both: one worker, one call
    per request (no coalescing), so that every load thread can have a call in flight on one replica."""
    directory = tmp_path_factory.mktemp("replicas")
    config = directory / "models.config"
    config.write_text(f'model_config_list {{ config {{ name: "mnist" base_path: "{models_dir / "mnist"}" '
                      'model_platform: "tensorflow" } }\n')
    servers = [Replica(config, directory), Replica(config, directory)]
    for server in servers:
        server.start(["mnist"], wait=False)
    gateway = None
    try:
        for server in servers:
            stack.wait_for_models(server.target, ["mnist"], server.process)
        target = stack.model_server_target([server.port for server in servers])
        # A deadline far beyond the few seconds the test holds calls on the stopped replica: what fails
        # the test is a call that is not retried, never a slow machine.
        settings = {"MODELS": "mnist", "GATEWAY_WORKERS": "1", "GATEWAY_THREADS": str(LOAD_THREADS),
                    "COALESCE_PREDICTIONS": "false", "REQUEST_TIMEOUT_SECONDS": "60"}
        gateway = GatewayProcess(target, models_dir, directory / "gateway.log", env=settings)
        gateway.start(wait_path="/readyz")
        yield servers, gateway
    finally:
        stack.stop(*[process for process in (gateway and gateway.process, *(s.process for s in servers))
                     if process is not None])


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.2)


def stalled(load: LoadLoop, seconds: float = 2.0) -> bool:
    """Whether no answer arrived for `seconds`."""
    answered = len(load.snapshot())
    time.sleep(seconds)
    return len(load.snapshot()) == answered


def test_calls_spread_over_both_replicas_and_survive_the_death_of_one(replicas, test_images):
    servers, gateway = replicas
    digit = encode(test_images["mnist"][0][0])
    before = [server.answered() for server in servers]
    failovers = sample(f"{gateway.url}/metrics", FAILOVERS)
    url = f"{gateway.url}/v1/models/mnist:predict"
    with LoadLoop(url, digit, threads=LOAD_THREADS) as load:
        # Both answer calls: round_robin per call, not one connection for everything.
        wait_until(lambda: all(s.answered() - b >= 20 for s, b in zip(servers, before, strict=True)), 60,
                   "both replicas answered 20 calls")
        # Stopped, the replica takes calls and answers none (its connection stays open): once no answer
        # comes, every load thread's call waits on it when it dies, and must go to the other one.
        servers[0].process.send_signal(signal.SIGSTOP)
        wait_until(lambda: stalled(load), 30, "the gateway's calls wait on the stopped replica")
        servers[0].process.send_signal(signal.SIGKILL)  # no goodbye: its calls in flight fail UNAVAILABLE
        servers[0].process.wait()
        killed_at = len(load.snapshot())
        wait_until(lambda: len(load.snapshot()) - killed_at >= 100, 60, "100 answers with one replica")
        # One replica serves mnist: ready.
        assert requests.get(f"{gateway.url}/readyz", timeout=10).status_code == 200
        servers[0].start(["mnist"])  # on the same port: the gateway's channel reconnects by itself
        wait_until(lambda: servers[0].answered() >= 20, 60, "the restarted replica answered 20 calls")
    answers = load.snapshot()
    failed = [answer for answer in answers if answer.status != 200]
    assert not failed, f"{len(failed)} of {len(answers)} failed, e.g. {failed[0]}"
    assert all(answer.version == 1 for answer in answers)
    # Each call that waited on the dead replica was retried on the other one, and counted (the lost
    # connection's health-check stream adds one or two).
    wait_until(lambda: sample(f"{gateway.url}/metrics", FAILOVERS) - failovers >= LOAD_THREADS, 10,
               f"{LOAD_THREADS} retried calls counted")


def test_a_model_server_target_that_grpc_cannot_resolve_stops_the_gateway(tmp_path):
    log = tmp_path / "gateway.log"
    with open(log, "wb") as output:
        process = stack.start_gateway(stack.free_port(), "ipv4:localhost:8500,127.0.0.1:8502", tmp_path,
                                      env={"GATEWAY_WORKERS": "1"}, stdout=output, stderr=subprocess.STDOUT)
    try:
        assert process.wait(timeout=60) != 0
    finally:
        stack.stop(process)
    assert ("MODEL_SERVER='ipv4:localhost:8500,127.0.0.1:8502' is not a gRPC target "
            "('localhost' does not appear to be an IPv4 or IPv6 address)") in log.read_text()


def test_tls_to_several_model_servers_checks_the_name_their_certificates_carry(models_dir, tmp_path):
    pki = Pki(tmp_path)
    key, certificate = pki.issue("model-server.internal", dns=["model-server.internal"],
                                 usage=ExtendedKeyUsageOID.SERVER_AUTH)
    options = ServerOptions(file_system_poll_wait_seconds=0, enable_model_warmup=False,
                            ssl_config_file=str(_ssl_config(tmp_path / "ssl.config", key, certificate)))
    servers = [create_server("127.0.0.1:0", build_single_model_config("mnist", str(models_dir / "mnist")),
                             options) for _ in range(2)]
    for server, _ in servers:
        server.start()
    try:
        target = stack.model_server_target([port for _, port in servers])
        with pytest.raises(ValueError, match="with TLS, give MODEL_SERVER_TLS_SERVER_NAME"):
            _gateway(models_dir, target, MODEL_SERVER_TLS_CA=str(pki.ca_path))
        client = _gateway(models_dir, target, MODEL_SERVER_TLS_CA=str(pki.ca_path),
                          MODEL_SERVER_TLS_SERVER_NAME="model-server.internal")
        assert [_predict_status(client) for _ in range(4)] == [200] * 4
    finally:
        for server, _ in servers:
            server.stop(0)
