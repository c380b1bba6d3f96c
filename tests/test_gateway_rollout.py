"""A new version rolling out over several model servers: for a while one replica has only the new
version and another only the old one (each loads and unloads on its own). The gateway pins the
latest version it knows; a call that reaches the other replica must still be answered, and read by
the version that answered it."""

from __future__ import annotations

import collections
import contextlib
import io
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from flask.testing import FlaskClient
from PIL import Image

from serving.gateway import create_app
from serving.model_server import parse_model_server_config
from serving.model_server.config import build_single_model_config
from serving.model_server.options import ServerOptions
from serving.model_server.server import create_server
from tests.model_fixtures.keras_classifier import export_test_model


@contextlib.contextmanager
def replicas(name: str, new: Path, old: Path, label: int | None = None) -> Iterator[FlaskClient]:
    """A gateway (its test client) in front of two model servers of model `name`: one serving the latest
    version under `new`, one the latest under `old`. The gateway reads the versions' assets from `new`.
    With `label`, each serves the versions of its folder and labels its own version `label` "stable"."""
    servers, ports = [], []
    try:
        for base, stable in ((new, label), (old, 1)):
            # Labels in a first config name versions not loaded yet: TF Serving needs this flag too.
            options = ServerOptions(file_system_poll_wait_seconds=0, enable_model_warmup=False,
                                    allow_version_labels_for_unavailable_models=label is not None)
            config = build_single_model_config(name, str(base))
            if label is not None:
                config = parse_model_server_config(
                    f'model_config_list {{ config {{ name: "{name}" base_path: "{base}" model_platform: '
                    f'"tensorflow" version_labels {{ key: "stable" value: {stable} }} }} }}')
            server, port = create_server("127.0.0.1:0", config, options)
            server.start()
            servers.append(server)
            ports.append(port)
        target = "ipv4:" + ",".join(f"127.0.0.1:{port}" for port in ports)
        app = create_app({"MODEL_SERVER": target, "MODEL_BASE_PATH": str(new.parent), "MODELS": name,
                          "COALESCE_PREDICTIONS": False})
        yield app.test_client()
    finally:
        for server in servers:
            server.stop(0)


def png_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def test_replicas_with_different_latest_versions_answer_every_request(tmp_path: Path):
    new, old = tmp_path / "new" / "toy", tmp_path / "old" / "toy"
    export_test_model(new / "1")
    export_test_model(new / "2", seed=1)
    shutil.copytree(new / "1", old / "1")  # this replica has not loaded version 2 yet; the other unloaded 1
    with replicas("toy", new, old) as client:
        answers = collections.Counter()
        for _ in range(30):
            response = client.post("/v1/models/toy:predict", data=png_bytes(np.zeros((28, 28), np.uint8)),
                                   content_type="image/png")
            answers[response.status_code, response.get_json().get("version")] += 1
    # Before, about half answered 404: the pinned version was not on the replica the call reached.
    assert {status for status, _ in answers} == {200}, answers
    assert {version for _, version in answers} <= {1, 2}


def test_a_new_version_without_a_score_and_back_each_answer_is_read_by_its_version(tmp_path: Path,
                                                                                   models_dir: Path):
    """One model server. The gateway has version 1 (with an out-of-distribution score) cached as the
    latest when version 2 (exported the old way, without one) replaces it, and version 2 cached when it
    is deleted again. Each time the pinned call fails and the retried one is answered by the other
    version: it must be read by that version. Before, the retry asked for the stale version's outputs
    (a 400 blaming the user for the score version 2 does not have) and read version 1's answer by
    version 2's (null flags)."""
    base = tmp_path / "mnist"
    shutil.copytree(models_dir / "mnist" / "1", base / "1")
    options = ServerOptions(file_system_poll_wait_seconds=1, enable_model_warmup=False)
    server, port = create_server("127.0.0.1:0", build_single_model_config("mnist", str(base)), options)
    server.start()
    try:
        app = create_app({"MODEL_SERVER": f"127.0.0.1:{port}", "MODEL_BASE_PATH": str(tmp_path),
                          "MODELS": "mnist", "COALESCE_PREDICTIONS": False, "METADATA_TTL_SECONDS": 600.0})
        client = app.test_client()
        image = png_bytes(np.random.default_rng(0).integers(0, 256, (28, 28), np.uint8))

        def answer() -> tuple[int, int | None, bool | None]:
            response = client.post("/v1/models/mnist:predict", data=image, content_type="image/png")
            body = response.get_json()
            assert response.status_code == 200, body
            (prediction,) = body["predictions"]
            return (body["version"], prediction["in_distribution"] is not None,
                    prediction["ood_score"] is not None)

        def wait_for(available: int) -> None:
            deadline, detail = time.monotonic() + 30, {}
            while time.monotonic() < deadline:
                detail = client.get("/v1/models/mnist").get_json()  # an error while none is loaded
                states = {v["version"]: v["state"] for v in detail.get("versions", [])}
                if {version for version, state in states.items() if state != "END"} == {available} and \
                        states[available] == "AVAILABLE":  # END: unloaded
                    return
                time.sleep(0.2)
            raise AssertionError(f"the model server did not switch to version {available}: {detail}")

        assert answer() == (1, True, True)  # cached as the latest
        export_test_model(base / "2", seed=1)
        wait_for(2)
        assert answer() == (2, False, False)
        shutil.rmtree(base / "2")
        wait_for(1)
        assert answer() == (1, True, True)
    finally:
        server.stop(0)


def test_explanations_during_a_rollout_come_from_the_version_that_predicted(tmp_path: Path,
                                                                              models_dir: Path):
    """Both versions explain (version 2 is another tiny network of the same shape). The explanation call
    is pinned to the version that answered the prediction; one that reaches the replica without it
    tries the next, instead of answering 404 for a model that is there. Each answer's saliency map is
    the answering version's own, computed here from the input the gateway sent (debug=true's PNG)."""
    import base64

    import tensorflow as tf

    new, old = tmp_path / "new" / "mnist", tmp_path / "old" / "mnist"
    shutil.copytree(models_dir / "mnist" / "1", new / "1")
    shutil.copytree(models_dir / "fashion_mnist" / "1", new / "2")
    shutil.copytree(new / "1", old / "1")
    explain = {version: tf.saved_model.load(str(new / str(version))).signatures["explain"]
               for version in (1, 2)}
    image = png_bytes(np.random.default_rng(0).integers(0, 256, (28, 28), np.uint8))
    with replicas("mnist", new, old) as client:
        answers = collections.Counter()
        for _ in range(30):
            response = client.post("/v1/models/mnist:predict?explain=true&debug=true", data=image,
                                   content_type="image/png")
            body = response.get_json()
            if response.status_code != 200:
                answers[response.status_code, body["code"]] += 1
                continue
            (prediction,) = body["predictions"]
            # Read by the version that answered: digits from version 1, clothes from version 2.
            classes = (new / str(body["version"]) / "assets" / "labels.txt").read_text().split("\n")
            seen = np.asarray(Image.open(io.BytesIO(base64.b64decode(prediction["preprocessed"]))))
            inputs = tf.constant(seen[None, :, :, None].astype(np.float32) / 255)
            answered = np.array(prediction["explanation"]["saliency"])
            distance = {version: np.abs(answered - signature(images=inputs)["saliency"].numpy()[0]).max()
                        for version, signature in explain.items()}
            closest = min(distance, key=distance.get)
            answers[body["version"], prediction["label"] in classes, closest,
                    bool(distance[closest] <= 2e-3 * answered.max())] += 1
    assert set(answers) <= {(1, True, 1, True), (2, True, 2, True)} and answers, answers


def test_a_label_during_a_rollout_is_resolved_by_the_replica_that_answers(tmp_path: Path):
    """"stable" is version 2 on one replica and version 1 on the other (one has moved it already). The
    retry sends the label itself, which the replica that takes the call resolves; before, the gateway
    resolved it on one replica and pinned the number, which the next replica did not have."""
    new, old = tmp_path / "new" / "toy", tmp_path / "old" / "toy"
    export_test_model(new / "2", seed=1)
    export_test_model(old / "1")
    with replicas("toy", new, old, label=2) as client:
        answers = collections.Counter()
        for index in range(30):
            if index % 3 == 0:
                client.get("/v1/models/toy")  # shifts which replica a pinned call meets
            image = png_bytes(np.zeros((28, 28), np.uint8))
            response = client.post("/v1/models/toy:predict?label=stable", data=image,
                                   content_type="image/png")
            answers[response.status_code, response.get_json().get("version")] += 1
    assert {status for status, _ in answers} == {200}, answers
