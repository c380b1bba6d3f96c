"""The Open Inference Protocol through its real clients, unchanged: NVIDIA's tritonclient (HTTP and
gRPC) and KServe's InferenceRESTClient / InferenceGRPCClient, run in .venv-oip against the
embedded model server; every answer equals TF Serving's Predict for the same batch.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.oip_clients.harness import LABELS, MODEL, images, oip_server, run_client, tf_serving_predict

__all__ = ["oip_server"]  # the fixture, imported for pytest

TOLERANCE = 1e-6


@pytest.fixture(scope="module")
def batch_file(tmp_path_factory):
    batch = images(5, seed=7)
    path = tmp_path_factory.mktemp("oip-batch") / "batch.npy"
    np.save(path, batch)
    return batch, str(path)


def _run_checked(script: str, transport: str, server, batch_file) -> dict:
    """Run a client script against the server; check its answers against Predict's; its report."""
    batch, path = batch_file
    target = server.grpc if transport == "grpc" else (server.url if script == "triton.py" else server.rest)
    report = run_client(script, transport, target, path)
    expected = tf_serving_predict(server.grpc, batch)
    for key in ("probabilities", "probabilities_json"):
        if report.get(key) is not None:
            np.testing.assert_allclose(np.array(report[key]), expected, rtol=0, atol=TOLERANCE, err_msg=key)
    top = np.argsort(-expected, axis=1, kind="stable")[:, :3]
    for row, (strings, indices) in enumerate(zip(report["classification"], top, strict=True)):
        assert [int(item.split(":")[1]) for item in strings] == indices.tolist()
        for item, index in zip(strings, indices, strict=True):
            score, _, label = item.split(":")
            assert label == LABELS[index]
            assert float(score) == pytest.approx(expected[row, index], abs=1e-6)
    assert report["live"] and report["ready"] and report["model_ready"] and report["live_after"]
    return report


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_tritonclient(oip_server, batch_file, protocol):
    report = _run_checked("triton.py", protocol, oip_server, batch_file)
    np.testing.assert_allclose(
        np.array(report["probabilities_v1"]),
        tf_serving_predict(oip_server.grpc, batch_file[0], version=1),
        atol=TOLERANCE,
    )
    assert report["model_ready_v1"]
    assert report["server_metadata"]["extensions"] == ["binary_tensor_data", "classification"]
    metadata = report["model_metadata"]
    assert (metadata["name"], metadata["versions"], metadata["platform"]) == (
        MODEL,
        ["1", "2"],
        "tensorflow_savedmodel",
    )
    tensors = [
        (tensor["name"], tensor["datatype"], [int(size) for size in tensor["shape"]])
        for tensor in metadata["inputs"] + metadata["outputs"]
    ]
    assert tensors == [("images", "FP32", [-1, 28, 28, 1]), ("probabilities", "FP32", [-1, 10])]
    errors = report["errors"]
    not_found, invalid = ("404", "400")
    if protocol == "grpc":
        not_found, invalid = ("StatusCode.NOT_FOUND", "StatusCode.INVALID_ARGUMENT")
    message = "Servable not found for request: Latest(nope)"
    assert errors["unknown_model"] == {"status": not_found, "message": message}
    assert errors["unknown_version"]["status"] == not_found
    assert "Specific(digits, 7)" in errors["unknown_version"]["message"]
    assert errors["wrong_shape"]["status"] == invalid
    assert "Cannot feed value of shape (5, 28, 28)" in errors["wrong_shape"]["message"]
    assert errors["wrong_datatype"] == {
        "status": invalid,
        "message": "Expects arg[0] to be float but double is provided",
    }


@pytest.mark.parametrize("transport", ["rest", "grpc"])
def test_kserve_clients(oip_server, batch_file, transport):
    report = _run_checked("kserve_clients.py", transport, oip_server, batch_file)
    errors = report["errors"]
    not_found, invalid = (404, 400) if transport == "rest" else ("NOT_FOUND", "INVALID_ARGUMENT")
    assert errors["unknown_model"]["status"] == not_found
    assert errors["wrong_shape"]["status"] == invalid
    assert errors["wrong_datatype"]["status"] == invalid
