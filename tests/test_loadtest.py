"""The load test, run as `make loadtest` runs it (Locust in a subprocess) against the test
stack: a short run passes and writes its reports; the SLO gate fails a run against a
missing model, on a wrong label and over its p95; the gRPC user reports its calls; a
distributed run (a master and two workers) passes, its totals the sum of the workers'.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("DATA_DIR", ROOT.parent / "shared" / "datasets"))
MODELS = ("mnist", "fashion_mnist", "cifar10")
# The tests judge correctness, not speed (no timing thresholds in tests): p95 may be anything.
ANY_P95 = ("--slo-p95-ms", "600000")


def run(
    tmp_path: Path,
    *arguments: str,
    run_time: str = "3s",
    users: int = 2,
    command: tuple[str, ...] = ("-m", "locust", "--headless", "--only-summary"),
) -> subprocess.CompletedProcess:
    """One bounded headless run; its CSV and HTML reports go to tmp_path."""
    completed = subprocess.run(
        [
            sys.executable,
            *command,
            "--csv",
            str(tmp_path / "run"),
            "--html",
            str(tmp_path / "run.html"),
            "--users",
            str(users),
            "--spawn-rate",
            "20",
            "--run-time",
            run_time,
            "--candidates",
            "16",
            *arguments,
        ],
        cwd=ROOT,
        env={**os.environ, "DATA_DIR": str(DATA_DIR)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    print(completed.stdout[-3000:], completed.stderr[-3000:])
    return completed


def stats(tmp_path: Path) -> dict[str, dict[str, str]]:
    with open(tmp_path / "run_stats.csv", newline="") as file:
        return {row["Name"]: row for row in csv.DictReader(file)}


def failures(tmp_path: Path) -> str:
    return (tmp_path / "run_failures.csv").read_text()


@pytest.fixture(scope="module")
def test_stack(gateway_url, model_server):
    return gateway_url, model_server


def run_all_users(tmp_path: Path, test_stack, *arguments: str, users: int) -> subprocess.CompletedProcess:
    """Both users against the test stack, as `make loadtest` runs them."""
    gateway_url, model_server = test_stack
    # Equal weights: even a slow machine then sends every model enough requests in a few seconds.
    return run(
        tmp_path,
        *arguments,
        "--host",
        gateway_url,
        "--grpc-target",
        model_server,
        *ANY_P95,
        "--models",
        "mnist:1,fashion_mnist:1,cifar10:1",
        run_time="6s",
        users=users,
        command=("tests/load/run.py",),
    )


def test_a_short_run_passes_and_writes_its_reports(test_stack, tmp_path):
    completed = run_all_users(tmp_path, test_stack, users=5)

    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = stats(tmp_path)
    for model in MODELS:
        for form in ("multipart", "raw"):
            row = rows[f"/v1/models/{model}:predict [{form}]"]
            assert int(row["Request Count"]) > 0 and row["Failure Count"] == "0"
    for model in MODELS:
        assert (
            int(rows[f"Predict {model}"]["Request Count"]) > 0
            and rows[f"Predict {model}"]["Failure Count"] == "0"
        )
    assert rows["Aggregated"]["Failure Count"] == "0"
    assert (tmp_path / "run.html").stat().st_size > 0
    assert "SLO (p95 <= 600000 ms, failures <= 0.00%): met" in completed.stdout


def test_a_model_that_does_not_exist_fails_the_gate(test_stack, tmp_path):
    gateway_url, _ = test_stack
    completed = run(
        tmp_path, "--host", gateway_url, "--models", "no_such_model=mnist:1", *ANY_P95, "GatewayUser"
    )

    assert completed.returncode != 0
    assert "HTTP 404 model_not_found" in failures(tmp_path)
    assert "MISSED" in completed.stdout


def test_a_wrong_label_in_a_200_answer_fails_the_gate(test_stack, tmp_path):
    gateway_url, _ = test_stack
    # The mnist model answers digits; fashion_mnist's labels (words) can never match them.
    completed = run(
        tmp_path,
        "--host",
        gateway_url,
        "--models",
        "mnist=fashion_mnist:1",
        "--known-good",
        "dataset",
        *ANY_P95,
        "GatewayUser",
    )

    assert completed.returncode != 0
    assert "wrong label for a known-good fashion_mnist image" in failures(tmp_path)
    row = stats(tmp_path)["/v1/models/mnist:predict [multipart]"]
    assert row["Failure Count"] == row["Request Count"] != "0"


def test_a_p95_above_the_objective_fails_the_gate(test_stack, tmp_path):
    gateway_url, _ = test_stack
    # No real request through the gateway and the model server answers in 0 ms.
    completed = run(
        tmp_path,
        "--host",
        gateway_url,
        "--models",
        "mnist:1",
        "--slo-p95-ms",
        "0",
        "GatewayUser",
        run_time="2s",
        users=1,
    )

    assert completed.returncode != 0
    assert "is above 0 ms" in completed.stdout
    assert stats(tmp_path)["Aggregated"]["Failure Count"] == "0"


def test_the_grpc_user_reports_its_calls_under_the_step_shape(test_stack, tmp_path):
    _, model_server = test_stack
    completed = run(
        tmp_path,
        "--grpc-target",
        model_server,
        "--load-shape",
        "step",
        "--step-users",
        "1",
        "--step-seconds",
        "1",
        *ANY_P95,
        "ModelServerUser",
        run_time="4s",
        users=3,
    )

    assert completed.returncode == 0, completed.stderr[-3000:]
    rows = stats(tmp_path)
    for model in MODELS:
        assert rows[f"Predict {model}"]["Type"] == "gRPC"
        assert int(rows[f"Predict {model}"]["Request Count"]) > 0
        assert rows[f"Predict {model}"]["Failure Count"] == "0"
    assert "step:   3 users" in completed.stdout


def answered_predictions(gateway_url: str) -> float:
    """The gateway's own count of the :predict requests it answered (every worker's, any status)."""
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"{gateway_url}/metrics", timeout=10) as response:
        families = text_string_to_metric_families(response.read().decode())
        return sum(sample.value for family in families if family.name == "pixelgate_requests"
                   for sample in family.samples
                   if sample.name == "pixelgate_requests_total" and ":predict" in sample.labels["endpoint"])


def test_a_distributed_run_passes_the_gate_and_the_master_sums_its_workers(test_stack, tmp_path):
    # `make loadtest WORKERS=2`: a master and two worker processes that Locust forks.
    before = answered_predictions(test_stack[0])
    completed = run_all_users(tmp_path, test_stack, "--workers", "2", users=4)
    answered = answered_predictions(test_stack[0]) - before

    assert completed.returncode == 0, completed.stderr[-3000:]
    with open(tmp_path / "run_workers.csv", newline="") as file:
        workers = list(csv.DictReader(file))
    # Four users over two workers: each sends requests; the master's totals are their sum.
    assert len(workers) == 2 and all(int(worker["Request Count"]) > 0 for worker in workers), workers
    total = stats(tmp_path)["Aggregated"]
    assert int(total["Request Count"]) == sum(int(worker["Request Count"]) for worker in workers)
    assert total["Failure Count"] == "0" and all(worker["Failure Count"] == "0" for worker in workers)
    assert f" = {total['Request Count']} requests" in completed.stdout.split("2 workers sent ", 1)[1]
    # And the gateway, which knows nothing of Locust, answered as many HTTP predictions as the master
    # counted (the gRPC users' calls go to the model server directly), plus at most one per user: a
    # request in flight when the run stops is answered but never reported.
    http = [row for name, row in stats(tmp_path).items() if name != "Aggregated" and row["Type"] == "POST"]
    counted = sum(int(row["Request Count"]) for row in http)
    assert http and counted <= answered <= counted + 4, (answered, counted)
    assert "SLO (p95 <= 600000 ms, failures <= 0.00%): met" in completed.stdout
