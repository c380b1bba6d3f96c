"""The gateway's gunicorn worker keeping a connection with its thread between requests
(serving/gateway/http_worker.py): requests in a row on one connection, and a second
connection still served while the first one keeps its thread busy.
"""

from __future__ import annotations

import http.client
import subprocess
import threading

import pytest

from serving import stack
from tests.conftest import encode

PREDICT_PATH = "/v1/models/mnist:predict"


@pytest.fixture(scope="module")
def one_thread_gateway(model_server, models_dir, tmp_path_factory):
    """A gateway with one worker of one thread: a thread kept by one connection is the only one."""
    port = stack.free_port()
    log = (tmp_path_factory.mktemp("worker-gateway") / "gateway.log").open("w")
    process = stack.start_gateway(
        port,
        model_server,
        models_dir,
        env={"GATEWAY_WORKERS": "1", "GATEWAY_THREADS": "1", "MODELS": "mnist"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        stack.wait_for_http(f"http://127.0.0.1:{port}/readyz", process)
        yield port
    finally:
        stack.stop(process)
        log.close()


@pytest.fixture(scope="module")
def digit_png(test_images):
    return encode(test_images["mnist"][0][0])


def predict(connection: http.client.HTTPConnection, png: bytes) -> dict:
    connection.request("POST", PREDICT_PATH, body=png, headers={"Content-Type": "image/png"})
    response = connection.getresponse()
    body = response.read()
    assert response.status == 200, body
    return {"body": body, "request_id": response.getheader("X-Request-ID")}


def test_requests_in_a_row_share_one_connection(one_thread_gateway, digit_png):
    connection = http.client.HTTPConnection("127.0.0.1", one_thread_gateway, timeout=30)
    try:
        answers = [predict(connection, digit_png)]
        socket = connection.sock
        answers += [predict(connection, digit_png) for _ in range(30)]
        assert connection.sock is socket  # never closed and reopened: kept alive throughout
    finally:
        connection.close()
    assert len({answer["body"] for answer in answers}) == 1  # the same image, the same answer
    assert len({answer["request_id"] for answer in answers}) == len(answers)


def test_a_busy_kept_alive_connection_does_not_starve_another(one_thread_gateway, digit_png):
    # One connection sends requests back to back, each right after its answer: were its thread
    # to wait on it whatever else is pending, a second connection would be answered only once
    # the first stopped. It must be answered while the first is still sending.
    second_answered = threading.Event()
    first_count = {"sent": 0, "stopped_early": False}
    limit = 3000

    def busy_client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", one_thread_gateway, timeout=30)
        try:
            while first_count["sent"] < limit:
                predict(connection, digit_png)
                first_count["sent"] += 1
                if second_answered.is_set():
                    first_count["stopped_early"] = True
                    return
        finally:
            connection.close()

    busy = threading.Thread(target=busy_client)
    busy.start()
    try:
        while first_count["sent"] < 5:  # the first connection is in its stride
            busy.join(0.01)
            assert busy.is_alive() or first_count["stopped_early"]
        second = http.client.HTTPConnection("127.0.0.1", one_thread_gateway, timeout=60)
        try:
            predict(second, digit_png)
        finally:
            second.close()
        second_answered.set()
    finally:
        busy.join(120)
    assert first_count["stopped_early"], f"the second connection waited for all {limit} requests of the first"
