"""A new version rolling out over several model servers: for a while one replica has only the new
version and another only the old one (each loads and unloads on its own). The gateway pins the
latest version it knows; a call that reaches the other replica must still be answered."""

from __future__ import annotations

import collections
import io
import shutil
from pathlib import Path

import numpy as np
from PIL import Image

from serving.gateway import create_app
from serving.model_server.config import build_single_model_config
from serving.model_server.options import ServerOptions
from serving.model_server.server import create_server
from tests.model_fixtures.keras_classifier import export_test_model


def test_replicas_with_different_latest_versions_answer_every_request(tmp_path: Path):
    new, old = tmp_path / "new" / "toy", tmp_path / "old" / "toy"
    export_test_model(new / "1")
    export_test_model(new / "2", seed=1)
    shutil.copytree(new / "1", old / "1")  # this replica has not loaded version 2 yet; the other unloaded 1
    servers = []
    try:
        for base in (new, old):
            options = ServerOptions(file_system_poll_wait_seconds=0, enable_model_warmup=False)
            server, port = create_server("127.0.0.1:0", build_single_model_config("toy", str(base)), options)
            server.start()
            servers.append((server, port))
        target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for _, port in servers)
        app = create_app({"MODEL_SERVER": target, "MODEL_BASE_PATH": str(tmp_path / "new"), "MODELS": "toy",
                          "COALESCE_PREDICTIONS": "false"})
        client = app.test_client()
        png = io.BytesIO()
        Image.fromarray(np.zeros((28, 28), np.uint8)).save(png, format="PNG")
        answers = collections.Counter()
        for _ in range(30):
            response = client.post("/v1/models/toy:predict", data=png.getvalue(), content_type="image/png")
            body = response.get_json()
            answers[response.status_code, body.get("version")] += 1
        # Before, about half answered 404: the pinned version was not on the replica the call reached.
        assert {status for status, _ in answers} == {200}, answers
        assert {version for _, version in answers} <= {1, 2}
    finally:
        for server, _ in servers:
            server.stop(0)
