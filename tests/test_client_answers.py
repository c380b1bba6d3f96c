"""The SDK against servers that answer something other than the gateway's JSON: another server
on the port (TF Serving's REST API, a proxy's error page), a wrong URL, a shape it does not know.
Each is a PixelgateError (`invalid_response`, or the error the status carries), never a KeyError."""

from __future__ import annotations

import asyncio
import base64
import csv
import http.server
import json
import threading

import pytest
from pixelgate import AsyncClient, Client, Explanation, Health, OutOfDistribution, PixelgateError
from pixelgate.cli import main as cli_main

DIGIT = b"\x89PNG\r\n\x1a\n not decoded by these servers"


class ScriptedServer:
    """Answers every GET and POST with `status`, `content_type` and `body`, as set by the test."""

    def __init__(self):
        script = self
        self.status, self.content_type, self.body = 200, "application/json", b"{}"
        self.paths: list[str] = []  # each request's path and query, in order

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802 - http.server's name
                script.paths.append(self.path)
                self.send_response(script.status)
                self.send_header("Content-Type", script.content_type)
                self.send_header("Content-Length", str(len(script.body)))
                self.end_headers()
                self.wfile.write(script.body)

            def do_POST(self):  # noqa: N802
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                self.do_GET()

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def answer(self, status: int, body: object, content_type: str = "application/json") -> None:
        self.status, self.content_type = status, content_type
        self.body = body if isinstance(body, bytes) else json.dumps(body).encode()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@pytest.fixture
def server():
    scripted = ScriptedServer()
    yield scripted
    scripted.close()


def call(url: str, method: str, use_async: bool):
    """Client(url).<method>(...) or the same awaited on an AsyncClient; no retries."""
    arguments = {
        "predict": ((DIGIT,), {"model": "mnist"}),
        "models": ((), {}),
        "model": (("mnist",), {}),
        "health": ((), {}),
    }[method]
    if not use_async:
        with Client(url, retries=0) as client:
            return getattr(client, method)(*arguments[0], **arguments[1])

    async def run():
        async with AsyncClient(url, retries=0) as client:
            return await getattr(client, method)(*arguments[0], **arguments[1])

    return asyncio.run(run())


WRONG_SHAPES = [
    # TF Serving's REST API on the gateway's port: GET /v1/models/mnist answers the version status.
    ("model", {"model_version_status": [{"version": "1", "state": "AVAILABLE"}]}, "KeyError"),
    ("models", {"models": {"mnist": "AVAILABLE"}}, "TypeError"),
    ("models", ["mnist"], "TypeError"),
    ("predict", {"model": "mnist", "version": 1}, "KeyError"),
    ("predict", {"model": "mnist", "version": 1, "predictions": [{"label": "7"}]}, "KeyError"),
    ("predict", {"model": "mnist", "version": 1, "predictions": []}, "0 predictions for 1 images"),
    ("predict", {"predictions": [[0.1, 0.9]]}, "KeyError"),  # TF Serving REST's :predict answer
]


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
@pytest.mark.parametrize(("method", "body", "said"), WRONG_SHAPES)
def test_a_200_in_another_shape_is_an_invalid_response(server, method, body, said, use_async):
    server.answer(200, body)
    with pytest.raises(PixelgateError) as raised:
        call(server.url, method, use_async)
    assert (raised.value.code, raised.value.status) == ("invalid_response", 200)
    assert said in raised.value.message and "pixelgate gateway" in raised.value.message


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_an_error_page_that_is_not_the_gateways_json_is_an_invalid_response(server, use_async):
    server.answer(502, b"<html><body><h1>502 Bad Gateway</h1>\n</body></html>", "text/html")
    with pytest.raises(PixelgateError) as raised:
        call(server.url, "predict", use_async)
    assert (raised.value.code, raised.value.status) == ("invalid_response", 502)
    assert "text/html" in raised.value.message and "502 Bad Gateway" in raised.value.message


def test_an_error_without_the_gateways_code_is_an_invalid_response(server):
    """TF Serving's REST port answers {"error": ...} without a code: not the gateway."""
    server.answer(400, {"error": "Missing model name in request."})
    with pytest.raises(PixelgateError) as raised:
        call(server.url, "models", use_async=False)
    assert (raised.value.code, raised.value.status) == ("invalid_response", 400)
    assert "Missing model name" in raised.value.message


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_health_reads_only_the_gateways_readiness_answers(server, use_async):
    server.answer(200, {"ready": True, "models": {"mnist": "AVAILABLE"}})
    assert call(server.url, "health", use_async) == Health(ready=True, models={"mnist": "AVAILABLE"})
    server.answer(503, {"ready": False, "models": {"mnist": "LOADING"}})
    assert call(server.url, "health", use_async) == Health(ready=False, models={"mnist": "LOADING"})

    # Not "not ready": the URL is wrong (a 404 page), a proxy refuses, or it is another server.
    for status, body, content_type, code in [
        (404, b"<h1>Not Found</h1>", "text/html", "invalid_response"),
        (404, {"error": "no such route", "code": "not_found"}, "application/json", "not_found"),
        (401, {"error": "token wanted", "code": "unauthorized"}, "application/json", "unauthorized"),
        (200, {"status": "ok"}, "application/json", "invalid_response"),
        (503, b"Service Unavailable", "text/plain", "invalid_response"),
    ]:
        server.answer(status, body, content_type)
        with pytest.raises(PixelgateError) as raised:
            call(server.url, "health", use_async)
        assert (raised.value.code, raised.value.status) == (code, status), body


def test_predict_folder_stops_on_an_answer_it_cannot_read(server, tmp_path):
    (tmp_path / "seven.png").write_bytes(DIGIT)
    server.answer(200, {"model": "mnist", "version": 1, "predictions": []})
    with Client(server.url, retries=0) as client, pytest.raises(PixelgateError) as raised:
        client.predict_folder(tmp_path, model="mnist", progress=False)
    assert raised.value.code == "invalid_response"


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("http://localhost:819o", "invalid gateway URL 'http://localhost:819o'"),
        ("localhost:8000", "did you mean http://localhost:8000?"),
        ("ftp://example.com", "http(s)://host[:port]"),
        ("http://", "http(s)://host[:port]"),
        ("", "http(s)://host[:port]"),
        ("http://127.0.0.1:99999", "Port out of range"),  # httpx would wrap it to port 34463
        ("http://localhost:8000/?key=abc", "has a query or fragment"),
        ("http:/localhost:8000", "got 'http:/localhost:8000'"),
    ],
)
def test_a_malformed_gateway_url_is_a_value_error(url, said):
    for client_class in (Client, AsyncClient):
        with pytest.raises(ValueError) as raised:
            client_class(url)
        assert said in str(raised.value)
        assert "did you mean http://http" not in str(raised.value)


def test_a_gateway_url_with_a_path_or_stray_spaces_is_kept_as_meant(server):
    server.answer(200, {"models": []})
    with Client(f" {server.url}/ ") as client:
        assert client.base_url == server.url and client.models() == []
    with Client("https://[::1]:8443/pixelgate/") as client:
        assert client.base_url == "https://[::1]:8443/pixelgate"


def test_the_cli_says_what_is_wrong_with_the_url(capsys):
    assert cli_main(["--url", "http://localhost:819o", "health"]) == 1
    error = capsys.readouterr().err
    assert "invalid gateway URL" in error and "Traceback" not in error
    assert cli_main(["--url", "http://localhost:819o", "--json", "models"]) == 1
    assert json.loads(capsys.readouterr().out)["code"] == "usage_error"


# --- out-of-distribution flags and explanations: today's answers and an older gateway's -------

HEATMAP = b"\x89PNG\r\n\x1a\n a heatmap"
OLD_PREDICTION = {
    "label": "7",
    "class_index": 7,
    "probability": 0.75,
    "top_k": [
        {"label": "7", "class_index": 7, "probability": 0.75},
        {"label": "1", "class_index": 1, "probability": 0.25},
    ],
}
FLAGGED_PREDICTION = {
    **OLD_PREDICTION,
    "in_distribution": False,
    "ood_score": 12.5,
    "explanation": {
        "method": "integrated_gradients",
        "saliency": [[0.0, 1.5, 0], [0.25, 0.0, 2]],
        "heatmap_png": base64.b64encode(HEATMAP).decode(),
    },
}
OLD_MODEL = {
    "name": "mnist",
    "version": 1,
    "input": {"shape": [28, 28, 1]},
    "classes": ["0", "1"],
    "versions": [{"version": 1, "state": "AVAILABLE"}],
}
OOD = {"threshold": 3.25, "method": "mahalanobis", "target_in_distribution_flag_rate": 0.05}


def answers_of(model: dict, predictions: list[dict]) -> dict:
    return {"model": model["name"], "version": model["version"], "predictions": predictions}


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_an_older_gateways_answers_parse_with_the_new_fields_none(server, use_async):
    """A gateway from before the flag (or a version exported without a score: the fields are null)."""
    for prediction in (OLD_PREDICTION, {**OLD_PREDICTION, "in_distribution": None, "ood_score": None}):
        server.answer(200, answers_of(OLD_MODEL, [prediction]))
        [parsed] = call(server.url, "predict", use_async).predictions
        assert (parsed.label, parsed.in_distribution, parsed.ood_score, parsed.explanation) == (
            "7",
            None,
            None,
            None,
        )
    for model in (OLD_MODEL, {**OLD_MODEL, "out_of_distribution": None}):
        server.answer(200, model)
        assert call(server.url, "model", use_async).out_of_distribution is None
        server.answer(200, {"models": [model]})
        assert call(server.url, "models", use_async)[0].out_of_distribution is None


@pytest.mark.parametrize("use_async", [False, True], ids=["sync", "async"])
def test_flags_scores_explanations_and_thresholds_parse(server, use_async):
    server.answer(
        200,
        answers_of(
            OLD_MODEL, [FLAGGED_PREDICTION, {**OLD_PREDICTION, "in_distribution": True, "ood_score": -1}]
        ),
    )

    async def explain_async():
        async with AsyncClient(server.url, retries=0) as client:
            return await client.predict([DIGIT, DIGIT], model="mnist", explain=True)

    if use_async:
        result = asyncio.run(explain_async())
    else:
        with Client(server.url, retries=0) as client:
            result = client.predict([DIGIT, DIGIT], model="mnist", explain=True)
    assert "explain=true" in server.paths[-1].split("?", 1)[1].split("&")
    flagged, usual = result.predictions
    assert (flagged.in_distribution, flagged.ood_score) == (False, 12.5)
    assert flagged.explanation == Explanation(
        "integrated_gradients", [[0.0, 1.5, 0.0], [0.25, 0.0, 2.0]], HEATMAP
    )
    assert flagged.explanation.shape == (2, 3)
    assert "saliency" not in repr(flagged) and "heatmap" not in repr(flagged)  # reprs stay one line
    assert (usual.in_distribution, usual.ood_score, usual.explanation) == (True, -1.0, None)
    assert isinstance(usual.ood_score, float)

    server.answer(200, {**OLD_MODEL, "out_of_distribution": OOD})
    assert call(server.url, "model", use_async).out_of_distribution == OutOfDistribution(
        3.25, "mahalanobis", 0.05
    )
    server.answer(200, {"models": [{**OLD_MODEL, "out_of_distribution": OOD}]})
    assert call(server.url, "models", use_async)[0].out_of_distribution.threshold == 3.25


def test_explain_is_only_sent_when_asked_for(server):
    server.answer(200, answers_of(OLD_MODEL, [OLD_PREDICTION]))
    with Client(server.url, retries=0) as client:
        client.predict(DIGIT, model="mnist")
        client.predict(DIGIT, model="mnist", explain=False, debug=True)
    assert ["explain" in path for path in server.paths] == [False, False]


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"in_distribution": "no"}, "in_distribution is 'no'"),
        ({"in_distribution": 0}, "in_distribution is 0"),
        ({"ood_score": "high"}, "'high' is not a number"),
        ({"ood_score": True}, "True is not a number"),
        ({"explanation": {"method": "occlusion"}}, "KeyError"),
        ({"explanation": {"method": "occlusion", "saliency": [["hot"]]}}, "not a number"),
        ({"explanation": {"method": "occlusion", "saliency": 3}}, "TypeError"),
    ],
)
def test_flags_in_another_shape_are_an_invalid_response(server, fields, said):
    server.answer(200, answers_of(OLD_MODEL, [{**OLD_PREDICTION, **fields}]))
    with pytest.raises(PixelgateError) as raised:
        call(server.url, "predict", use_async=False)
    assert raised.value.code == "invalid_response" and said in raised.value.message


def test_the_cli_shows_the_flag_and_writes_heatmaps_beside_its_results(server, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    for name in ("seven.png", "seven.jpg"):
        (tmp_path / "in" / name).write_bytes(DIGIT)
    server.answer(200, answers_of(OLD_MODEL, [FLAGGED_PREDICTION]))
    output = tmp_path / "out" / "results.csv"
    arguments = ["--url", server.url, "predict", str(tmp_path / "in"), "-m", "mnist", "-o", str(output)]
    assert cli_main([*arguments, "--explain", "--no-progress"]) == 0
    out, err = capsys.readouterr()
    header, *rows = out.splitlines()
    assert header.split() == ["PATH", "LABEL", "PROB", "IN-DIST", "OOD", "SCORE", "OTHERS"]
    assert [row.split()[1:6] for row in rows] == [["7", "75.0%", "no", "12.50", "1"]] * 2
    assert "2 images: 2 classified, 0 failed, 2 out of distribution in" in err
    heatmaps = tmp_path / "out" / "results-heatmaps"
    assert f"2 heatmaps written to {heatmaps}" in err
    assert sorted(p.name for p in heatmaps.iterdir()) == ["seven.jpg.heatmap.png", "seven.png.heatmap.png"]
    assert (heatmaps / "seven.png.heatmap.png").read_bytes() == HEATMAP
    with output.open(newline="") as file:
        row = next(csv.DictReader(file))
    assert (row["in_distribution"], float(row["ood_score"])) == ("false", 12.5)
    assert row["heatmap"] == str(heatmaps / "seven.jpg.heatmap.png")

    # --explain-dir, --json: the saliency map in the JSON, the PNG in the file it names.
    assert cli_main([*arguments[:6], "--explain-dir", str(tmp_path / "maps"), "--json", "--no-progress"]) == 0
    saved = json.loads(capsys.readouterr().out)
    assert saved[0]["explanation"] == {
        "method": "integrated_gradients",
        "saliency": FLAGGED_PREDICTION["explanation"]["saliency"],
    }
    assert saved[0]["heatmap"] == str(tmp_path / "maps" / "seven.jpg.heatmap.png")
    assert (saved[0]["in_distribution"], saved[0]["ood_score"]) == (False, 12.5)

    # An older gateway: no flag, a "-" column, no count in the summary, no heatmaps.
    server.answer(200, answers_of(OLD_MODEL, [OLD_PREDICTION]))
    assert cli_main([*arguments[:6], "--no-progress"]) == 0
    out, err = capsys.readouterr()
    assert [row.split()[3:5] for row in out.splitlines()[1:]] == [["-", "-"]] * 2
    assert "out of distribution" not in err and "heatmap" not in err


def test_the_cli_shows_a_models_threshold_and_each_versions(server, capsys):
    versions = [{"version": 1, "state": "AVAILABLE", "error": "", "out_of_distribution": None},
                {"version": 2, "state": "AVAILABLE", "error": "", "out_of_distribution": OOD}]
    server.answer(200, {**OLD_MODEL, "version": 2, "out_of_distribution": OOD, "versions": versions})
    assert cli_main(["--url", server.url, "model", "mnist"]) == 0
    out = capsys.readouterr().out
    assert "flag: score above 3.25 (mahalanobis), calibrated to flag 5% of in-distribution" in out
    assert [line.split() for line in out.splitlines()[-3:]] == [
        ["VERSION", "STATE", "OOD", "THRESHOLD", "ERROR"],
        ["1", "AVAILABLE", "-"],
        ["2", "AVAILABLE", "3.25"],
    ]
    with Client(server.url, retries=0) as client:
        assert [v.out_of_distribution for v in client.model("mnist").versions] == [
            None, OutOfDistribution(3.25, "mahalanobis", 0.05)]
    server.answer(200, OLD_MODEL)  # an older gateway, or a version without a score
    assert cli_main(["--url", server.url, "model", "mnist"]) == 0
    assert "out-of-distribution flag: none (this version answers no score" in capsys.readouterr().out


def test_a_threshold_without_a_method_name_parses(server):
    server.answer(200, {**OLD_MODEL, "out_of_distribution": {"threshold": 2, "method": None}})
    with Client(server.url, retries=0) as client:
        assert client.model("mnist").out_of_distribution == OutOfDistribution(2.0, None, None)


def test_a_version_that_cannot_explain_stops_a_folder_run(server, tmp_path):
    """explanation_unavailable is a 400 every file would get: the run stops, as for an unknown model."""
    (tmp_path / "seven.png").write_bytes(DIGIT)
    (tmp_path / "one.png").write_bytes(DIGIT)
    server.answer(
        400, {"error": "model 'mnist' version 1 was exported without ...", "code": "explanation_unavailable"}
    )
    with Client(server.url, retries=0) as client, pytest.raises(PixelgateError) as raised:
        client.predict_folder(tmp_path, model="mnist", explain=True, progress=False)
    assert (raised.value.status, raised.value.code) == (400, "explanation_unavailable")
    with Client(server.url, retries=0) as client, pytest.raises(ValueError, match="explain=True"):
        client.predict_folder(tmp_path, model="mnist", heatmap_dir=tmp_path / "maps")
