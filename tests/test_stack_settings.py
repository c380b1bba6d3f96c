"""`make serve`'s settings that cannot work stop it at once with one line that says what to fix,
before anything starts (make passes its command-line variables in the environment too)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from serving import stack


@pytest.mark.parametrize("environment, flags", [
    ({"REPLICAS": "two"}, []),  # `make serve REPLICAS=two`: make exports it
    ({}, ["--replicas=two"]),
    ({}, ["--replicas=0"]),
])
def test_a_replica_count_that_is_no_number_of_servers_is_one_clear_line(tmp_path, environment, flags):
    finished = subprocess.run([sys.executable, "-m", "serving.stack", f"--models-dir={tmp_path}", *flags],
                              cwd=stack.ROOT, env={**os.environ, **environment}, capture_output=True,
                              text=True, timeout=60)
    assert finished.returncode == 2, finished.stderr
    assert "Traceback" not in finished.stderr
    assert "the number of model servers (REPLICAS) must be 1 or more" in finished.stderr.splitlines()[-1]


@pytest.mark.parametrize("variable", ["MODEL_SERVER_PORT", "MODEL_SERVER_REST_PORT", "GATEWAY_PORT"])
def test_a_port_that_is_no_number_is_one_clear_line(tmp_path, variable):
    finished = subprocess.run([sys.executable, "-m", "serving.stack", f"--models-dir={tmp_path}"],
                              cwd=stack.ROOT, env={**os.environ, variable: "eighty"}, capture_output=True,
                              text=True, timeout=60)
    assert finished.returncode == 2 and "Traceback" not in finished.stderr, finished.stderr
    assert "invalid int value: 'eighty'" in finished.stderr.splitlines()[-1]


def test_a_missing_batching_file_is_one_clear_line_and_the_default_is_found_from_anywhere(tmp_path):
    """The default is the checkout's own file, whatever the working directory: before, started from
    elsewhere, the model server failed on a relative path and the stack asked "A port in use?"."""
    environment = {**os.environ, "PYTHONPATH": str(stack.ROOT)}
    environment.pop("BATCHING_PARAMETERS_FILE", None)
    command = [sys.executable, "-m", "serving.stack", f"--models-dir={tmp_path}"]
    missing = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60,
                             env={**environment, "BATCHING_PARAMETERS_FILE": str(tmp_path / "no")})
    assert missing.returncode == 2 and "Traceback" not in missing.stderr, missing.stderr
    assert f"--batching-parameters-file {tmp_path / 'no'}: no such file" in missing.stderr.splitlines()[-1]
    # The default passes that check from here, and the stack goes on to the next thing to fix.
    default = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True,
                             timeout=60)
    assert "no exported models in" in default.stderr.splitlines()[-1], default.stderr
