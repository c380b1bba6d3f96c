"""Faults between the gateway and the model server, on a private stack of real processes:
version labels and policy, a new version published under load, SIGTERM of either server with
requests in flight, a model server that stops, stalls, and comes back on the same port.

The tests of this module run in order on one stack; each leaves it serving again.
"""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from serving import stack
from tests.conftest import encode
from tests.gateway_stack import (
    GatewayProcess,
    LoadLoop,
    ModelServerProcess,
    export_slow_model,
    pause,
    publish_version,
    resume,
    send,
)

MODELS = ["mnist", "slow", "labelled"]
DEADLINE_SECONDS = 8.0  # the gateway's REQUEST_TIMEOUT_SECONDS here
READINESS_SECONDS = 1.0  # its READINESS_TIMEOUT_SECONDS
SLOW_SECONDS = 1.5  # how long the "slow" model takes per request (the model server's grace is 5 s)
IN_FLIGHT = 2


@pytest.fixture(scope="module")
def private_stack(tmp_path_factory, models_dir):
    base = tmp_path_factory.mktemp("fault-models")
    shutil.copytree(models_dir / "mnist" / "1", base / "mnist" / "1")
    for version in (1, 2, 3):
        shutil.copytree(models_dir / "mnist" / "1", base / "labelled" / str(version))
    export_slow_model(base / "slow" / "1", SLOW_SECONDS)
    config = base / "models.config"
    config.write_text(f"""model_config_list {{
  config {{ name: "mnist" base_path: "{base / "mnist"}" model_platform: "tensorflow" }}
  config {{ name: "slow" base_path: "{base / "slow"}" model_platform: "tensorflow" }}
  config {{
    name: "labelled" base_path: "{base / "labelled"}" model_platform: "tensorflow"
    model_version_policy {{ specific {{ versions: 1 versions: 2 }} }}
    version_labels {{ key: "stable" value: 1 }}
    version_labels {{ key: "canary" value: 2 }}
  }}
}}
""")
    logs = tmp_path_factory.mktemp("fault-logs")
    # Inter-op threads beyond the 2 cores: each of the slow model's requests holds one while it loops.
    server = ModelServerProcess(
        config,
        logs,
        flags=(
            "--file_system_poll_wait_seconds=1",
            "--allow_version_labels_for_unavailable_models",
            "--tensorflow_inter_op_parallelism=8",
        ),
    )
    server.start(MODELS)
    gateway = GatewayProcess(
        server.target,
        base,
        logs / "gateway.log",
        env={
            "MODELS": ",".join(MODELS),
            "REQUEST_TIMEOUT_SECONDS": str(DEADLINE_SECONDS),
            "READINESS_TIMEOUT_SECONDS": str(READINESS_SECONDS),
            "METADATA_TTL_SECONDS": "1",
            "GATEWAY_GRACEFUL_TIMEOUT": "20",
            # The SIGTERM tests need IN_FLIGHT slow calls out at the model server at once; with
            # one shared call per worker, a second request would wait in the gateway instead.
            "COALESCE_MAX_IN_FLIGHT": str(IN_FLIGHT),
        },
    )
    gateway.start(wait_path="/readyz")
    try:
        yield server, gateway, base
    finally:
        for process in (gateway.process, server.process):
            if process is not None and process.poll() is None:
                resume(process)
        gateway.stop()
        server.stop()


@pytest.fixture(scope="module")
def digit(test_images):
    return encode(test_images["mnist"][0][0])


def predict_url(gateway, model, query=""):
    return f"{gateway.url}/v1/models/{model}:predict{query}"


def post(gateway, model, payload, query="", timeout=30):
    with requests.Session() as session:
        return send(
            session, predict_url(gateway, model, query), payload, {"Content-Type": "image/png"}, timeout
        )


def test_labels_and_version_policy_route_requests(private_stack, digit):
    _, gateway, _ = private_stack
    assert post(gateway, "labelled", digit, "?label=stable").version == 1
    assert post(gateway, "labelled", digit, "?label=canary").version == 2
    assert post(gateway, "labelled", digit, "?version=1").version == 1
    assert post(gateway, "labelled", digit).version == 2  # latest of what the `specific` policy loads
    not_loaded = post(gateway, "labelled", digit, "?version=3")  # on disk, but not in the policy
    assert (not_loaded.status, not_loaded.error.split(":")[0]) == (404, "model_not_found")
    unknown = post(gateway, "labelled", digit, "?label=nightly")
    assert (unknown.status, unknown.error.split(":")[0]) == (404, "model_not_found")
    response = requests.post(
        predict_url(gateway, "labelled", "?label=canary"),
        data=digit,
        headers={"Content-Type": "image/png"},
        timeout=30,
    )
    assert response.headers["X-Model-Version"] == "2"
    detail = requests.get(f"{gateway.url}/v1/models/labelled", timeout=10).json()
    assert {entry["version"]: entry["state"] for entry in detail["versions"]} == {
        1: "AVAILABLE",
        2: "AVAILABLE",
    }


def test_a_new_version_published_under_load_fails_no_request(private_stack, digit):
    server, gateway, base = private_stack
    with LoadLoop(predict_url(gateway, "mnist"), digit, threads=4) as load:
        time.sleep(1.0)
        publish_version(base / "mnist" / "1", base / "mnist", 2)
        published = time.monotonic()
        deadline = published + 60
        while not any(a.version == 2 and a.started > published for a in load.snapshot()):
            assert time.monotonic() < deadline, "version 2 never served"
            time.sleep(0.2)
        swapped = time.monotonic()
        while not _version_unloaded(gateway, "mnist", 1):  # keep the load on while version 1 goes away
            assert time.monotonic() < deadline, "version 1 never unloaded"
            time.sleep(0.2)
        time.sleep(1.0)
    answers = load.answers
    failed = [a for a in answers if a.status != 200]
    print(
        f"\nversion swap under load: {len(answers)} requests, {len(failed)} failed, "
        f"version 2 served {swapped - published:.1f}s after it was published"
    )
    assert not failed, failed[:5]
    assert {a.version for a in answers} == {1, 2}
    last = max(a.started for a in answers if a.version == 1)
    assert all(a.version == 2 for a in answers if a.started > last)


def _version_unloaded(gateway, model, version):
    detail = requests.get(f"{gateway.url}/v1/models/{model}", timeout=10).json()
    return {entry["version"]: entry["state"] for entry in detail["versions"]}.get(version) == "END"


def _wait_until_in_flight(gateway, count):
    """Until the gateway is answering `count` requests (besides this scrape), and a moment more
    for them to reach the model, which holds each for SLOW_SECONDS."""
    deadline = time.monotonic() + 30
    while True:
        text = requests.get(f"{gateway.url}/metrics", timeout=10).text
        in_flight = next(
            float(line.split()[-1])
            for line in text.splitlines()
            if line.startswith("pixelgate_requests_in_flight ")
        )
        if in_flight >= count + 1:
            break
        assert time.monotonic() < deadline, "the slow requests never started"
        time.sleep(0.05)
    time.sleep(SLOW_SECONDS / 4)


def _slow_requests(pool, gateway, digit):
    # version=1: once warmed, the gateway knows the version and sends each request straight on.
    assert post(gateway, "slow", digit, "?version=1").status == 200
    return [pool.submit(post, gateway, "slow", digit, "?version=1") for _ in range(IN_FLIGHT)]


def test_model_server_sigterm_finishes_requests_in_flight(private_stack, digit):
    server, gateway, _ = private_stack
    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        in_flight = _slow_requests(pool, gateway, digit)
        _wait_until_in_flight(gateway, IN_FLIGHT)
        stopped = time.monotonic()
        server.process.send_signal(15)
        time.sleep(0.3)
        refused = post(gateway, "mnist", digit)
        server.process.wait(timeout=30)
        exit_seconds = time.monotonic() - stopped
        finished = [future.result() for future in in_flight]
    print(
        f"\nmodel server SIGTERM: exited after {exit_seconds:.1f}s, in-flight answers "
        f"{[a.status for a in finished]}, new request {refused.status} in {refused.seconds:.2f}s"
    )
    assert [a.status for a in finished] == [200] * IN_FLIGHT
    assert refused.status == 503 and refused.error.startswith("model_server_unavailable")
    assert server.process.returncode == 0


def test_model_server_down_answers_503_then_recovers_by_itself(private_stack, digit):
    server, gateway, _ = private_stack
    if server.process.poll() is None:  # the previous test stops it; alone, this one does
        server.stop()
    down = [post(gateway, "mnist", digit) for _ in range(5)]
    assert {a.status for a in down} == {503}
    assert max(a.seconds for a in down) < DEADLINE_SECONDS  # refused at once, not after the deadline
    ready = requests.get(f"{gateway.url}/readyz", timeout=10)
    assert ready.status_code == 503 and ready.json()["ready"] is False
    assert ready.json()["models"]["mnist"].startswith("UNAVAILABLE")

    restarted = time.monotonic()
    server.start(MODELS, wait=False)
    stack.wait_for_models(server.target, MODELS, server.process)
    available = time.monotonic()
    deadline = available + 60
    while (answer := post(gateway, "mnist", digit)).status != 200:
        assert answer.status == 503, answer
        assert time.monotonic() < deadline, "the gateway did not recover"
        time.sleep(0.05)
    recovered = time.monotonic()
    print(
        f"\nmodel server restart: models available {available - restarted:.1f}s after the start, "
        f"gateway answering 200 again {recovered - available:.2f}s after that"
    )
    assert requests.get(f"{gateway.url}/readyz", timeout=10).status_code == 200
    # The gateway retries the connection at least every 2 s (grpc.max_reconnect_backoff_ms); with
    # gRPC's default backoff (up to 120 s) it would stay unusable for tens of seconds after an outage.
    assert recovered - available < 6


def test_a_stalled_model_server_answers_504_at_the_deadline(private_stack, digit):
    server, gateway, _ = private_stack
    pause(server.process)
    try:
        stalled = post(gateway, "mnist", digit)
        ready = requests.get(f"{gateway.url}/readyz", timeout=30)
        # The cached metadata has expired (METADATA_TTL_SECONDS 1): the listing asks again.
        listing = requests.get(f"{gateway.url}/v1/models", timeout=60)
    finally:
        resume(server.process)
    print(
        f"\nstalled model server: {stalled.status} after {stalled.seconds:.1f}s "
        f"(deadline {DEADLINE_SECONDS}s); /readyz {ready.elapsed.total_seconds():.1f}s, "
        f"/v1/models {listing.elapsed.total_seconds():.1f}s"
    )
    assert stalled.status == 504 and stalled.error.startswith("deadline_exceeded")
    assert DEADLINE_SECONDS * 0.9 <= stalled.seconds < DEADLINE_SECONDS + 10  # the deadline, not a hang
    # The models are asked about at once: one deadline, not one per model (3 here).
    assert ready.status_code == 503 and ready.elapsed.total_seconds() < 2 * READINESS_SECONDS
    assert all(state.startswith("UNAVAILABLE") for state in ready.json()["models"].values())
    assert listing.status_code == 200 and listing.elapsed.total_seconds() < 2 * DEADLINE_SECONDS
    assert [model["state"] for model in listing.json()["models"]] == ["UNAVAILABLE"] * len(MODELS)
    assert post(gateway, "mnist", digit).status == 200


def test_gateway_sigterm_finishes_requests_in_flight_and_refuses_new_ones(private_stack, digit):
    _, gateway, _ = private_stack
    with ThreadPoolExecutor(IN_FLIGHT) as pool:
        in_flight = _slow_requests(pool, gateway, digit)
        _wait_until_in_flight(gateway, IN_FLIGHT)
        stopped = time.monotonic()
        gateway.process.send_signal(15)
        time.sleep(0.5)
        refused = post(gateway, "mnist", digit, timeout=10)
        finished = [future.result() for future in in_flight]
        gateway.process.wait(timeout=60)
        exit_seconds = time.monotonic() - stopped
    print(
        f"\ngateway SIGTERM: exited after {exit_seconds:.1f}s, "
        f"in-flight answers {[a.status for a in finished]}, "
        f"new request after {refused.seconds:.2f}s: {refused.error or refused.status}"
    )
    assert [a.status for a in finished] == [200] * IN_FLIGHT
    assert refused.status == 0 and "ConnectionError" in refused.error  # the listeners are closed: refused
    assert refused.seconds < SLOW_SECONDS  # at once, not when the gateway exits
    assert gateway.process.returncode == 0
