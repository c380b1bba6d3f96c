"""The embedded model server's REST server: no request body gets a server error, the thread
limit, deadlines, CORS, the Prometheus page, and the real command line.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serving import stack
from serving.config.monitoring_config_pb2 import MonitoringConfig
from serving.model_server.rest.api import RestApiHandler
from serving.model_server.rest.http_server import RestApiServer
from tests.model_server_rest_helpers import post


def rest_handler(served, timeout_in_ms: int = 0) -> RestApiHandler:
    """A second handler over the running server's core, submitting to its event loop."""
    return RestApiHandler(served.server.core, served.server.grpc_server.loop, timeout_in_ms)


_LEAVES = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats() | st.text(max_size=4)
    | st.just({"b64": "aGk="}) | st.just({"b64": "!"})
)
_VALUES = st.recursive(
    _LEAVES,
    lambda children: st.lists(children, max_size=3)
    | st.dictionaries(st.sampled_from(["x", "name", "x2", "b64", "counts"]), children, max_size=3),
    max_leaves=10,
)
_SIGNATURES = st.sampled_from(
    ["", "greet", "two_inputs", "double_counts", "halves", "scalar", "regress_x_to_y", "classify_x_to_labels",
     "regress_x2_to_y3", "nope"]
)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    signature=_SIGNATURES,
    key=st.sampled_from(["instances", "inputs", "examples", "context"]),
    value=_VALUES,
    verb=st.sampled_from(["predict", "classify", "regress"]),
)
def test_no_request_body_gets_a_server_error(half_plus_two_server, signature, key, value, verb):
    handler = rest_handler(half_plus_two_server, timeout_in_ms=5000)
    body = json.dumps({"signature_name": signature, key: value}).encode()
    answer = handler.handle("POST", f"/v1/models/half_plus_two:{verb}", body)
    assert answer.status in (200, 400, 404, 501), (body, answer.body)
    assert json.loads(answer.body)


def test_requests_beyond_the_thread_limit_wait_their_turn(half_plus_two_server):
    server = RestApiServer(rest_handler(half_plus_two_server), "127.0.0.1:0", num_threads=1)
    server.start()
    try:
        url = f"http://127.0.0.1:{server.port}/v1/models/half_plus_two:predict"
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda i: post(url, {"instances": [float(i)]}).status_code, range(16)))
        assert codes == [200] * 16
    finally:
        server.stop(5)


def test_session_runs_past_rest_api_timeout_answer_504(half_plus_two_server):
    handler = rest_handler(half_plus_two_server, timeout_in_ms=200)
    started = time.monotonic()
    body = b'{"signature_name": "stuck", "instances": [[1.0]]}'
    answer = handler.handle("POST", "/v1/models/half_plus_two:predict", body)
    assert (answer.status, json.loads(answer.body)) == (504, {"error": "Timed out waiting for notification"})
    assert time.monotonic() - started < 20  # it ended; the deadline, not a hang
    # The session that timed out still serves.
    ok = handler.handle("POST", "/v1/models/half_plus_two:predict", b'{"instances": [1.0]}')
    assert json.loads(ok.body) == {"predictions": [2.5]}


def test_cors_headers_and_preflight(half_plus_two_server):
    handler = rest_handler(half_plus_two_server)
    server = RestApiServer(handler, "127.0.0.1:0", 2, enable_cors=True)
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        answer = post(f"{base}/v1/models/half_plus_two:predict", {"instances": [1.0]})
        assert answer.headers["Access-Control-Allow-Origin"] == "*"
        assert answer.headers["Access-Control-Allow-Methods"] == "POST, GET"
        assert answer.headers["Access-Control-Allow-Headers"] == "Content-Type"
        url = f"{base}/v1/models/half_plus_two:predict"
        preflight = requests.options(url, headers={"Origin": "https://a.example"}, timeout=30)
        assert preflight.status_code == 200
        refused = requests.options(url, timeout=30)
        assert refused.status_code == 400
        assert refused.json() == {"error": "Origin header is missing in CORS preflight"}
    finally:
        server.stop(5)
    # Off by default (--rest_api_enable_cors_support=false).
    plain = post(f"{half_plus_two_server.rest}/v1/models/half_plus_two:predict", {"instances": [1.0]})
    assert "Access-Control-Allow-Origin" not in plain.headers


def test_prometheus_page_where_the_monitoring_config_puts_it(half_plus_two_server):
    config = MonitoringConfig()
    config.prometheus_config.enable = True
    config.prometheus_config.path = "/custom/metrics"
    handler = rest_handler(half_plus_two_server)
    server = RestApiServer(handler, "127.0.0.1:0", 2, monitoring_config=config)
    server.start()
    try:
        page = requests.get(f"http://127.0.0.1:{server.port}/custom/metrics", timeout=30)
        assert page.status_code == 200 and page.headers["Content-Type"].startswith("text/plain")
        assert "# TYPE" in page.text
    finally:
        server.stop(5)
    # Not exported unless enabled.
    default_path = f"{half_plus_two_server.rest}/monitoring/prometheus/metrics"
    assert requests.get(default_path, timeout=30).status_code == 404


def test_command_line_rest_flags_monitoring_and_config_reload(half_plus_two_models, tmp_path):
    """`python -m serving.model_server` as TF Serving's tests start it: --rest_api_port,
    --rest_api_timeout_in_ms, --rest_api_num_threads, --rest_api_enable_cors_support,
    --monitoring_config_file, --model_config_file_poll_wait_seconds."""
    def config_text(*names: str) -> str:
        entries = "".join(
            f'config {{ name: "{name}" base_path: "{half_plus_two_models / name}" '
            'model_platform: "tensorflow" }'
            for name in names
        )
        return f"model_config_list {{ {entries} }}"

    config_file = tmp_path / "models.config"
    config_file.write_text(config_text("half_plus_two"))
    monitoring_file = tmp_path / "monitoring.config"
    monitoring_file.write_text('prometheus_config { enable: true, path: "/monitoring/prometheus/metrics" }')
    grpc_port, rest_port = stack.free_port(), stack.free_port()
    process = stack.start_model_server(
        grpc_port,
        config_file,
        f"--rest_api_port={rest_port}",
        "--rest_api_timeout_in_ms=300",
        "--rest_api_num_threads=2",
        "--rest_api_enable_cors_support",
        f"--monitoring_config_file={monitoring_file}",
        "--model_config_file_poll_wait_seconds=1",
        "--file_system_poll_wait_seconds=0",
    )
    base = f"http://127.0.0.1:{rest_port}"
    try:
        stack.wait_for_http(f"{base}/v1/models/half_plus_two", process, timeout=180)
        answer = post(f"{base}/v1/models/half_plus_two:predict", {"instances": [1.0, 2.0, 5.0]})
        assert answer.json() == {"predictions": [2.5, 3.0, 4.5]}
        assert answer.headers["Access-Control-Allow-Origin"] == "*"
        stuck_body = {"signature_name": "stuck", "instances": [[1.0]]}
        stuck = post(f"{base}/v1/models/half_plus_two:predict", stuck_body)
        assert stuck.status_code == 504
        assert "# TYPE" in requests.get(f"{base}/monitoring/prometheus/metrics", timeout=30).text

        config_file.write_text(config_text("versioned"))  # the poll swaps one model for the other
        deadline = time.monotonic() + 120
        while "AVAILABLE" not in requests.get(f"{base}/v1/models/versioned", timeout=30).text:
            assert time.monotonic() < deadline, "the new config was not picked up"
            time.sleep(0.5)
        versioned = post(f"{base}/v1/models/versioned:predict", {"instances": [1.0]})
        assert versioned.json() == {"predictions": [3.5]}
        while post(f"{base}/v1/models/half_plus_two:predict", {"instances": [1.0]}).status_code != 404:
            assert time.monotonic() < deadline, "the model left out of the config still serves"
            time.sleep(0.5)
    finally:
        stack.stop(process)


def test_rest_port_equal_to_grpc_port_is_skipped_with_tf_servings_error(half_plus_two_server, caplog):
    from serving.model_server.__main__ import add_rest_api
    from serving.model_server.options import ServerOptions

    add_rest_api(half_plus_two_server.server, ServerOptions(port=8600, rest_api_port=8600))
    assert "server_options.http_port cannot be same as grpc_port" in caplog.text
