"""Server-side batching's parameters file: the shipped files parse, bad ones are refused, and a
misspelt one stops the model server from starting.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from serving.model_server.batching import read_batching_options
from serving.model_server.errors import InvalidArgument

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["batching_parameters.txt", "batching_parameters_gpu.txt"])
def test_shipped_parameter_files_parse(name):
    options = read_batching_options(str(ROOT / "serving" / "config" / name), cpu_count=16)
    assert options.num_batch_threads == 16  # both leave it out: one per core, TF Serving's default
    assert options.max_batch_size >= 32


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("max_batch_sise { value: 8 }", "Invalid protobuf file"),  # misspelt field
        ("max_batch_size: 8", "Invalid protobuf file"),  # a wrapper, not a scalar
        (
            "max_batch_size { value: 8 } num_batch_threads { value: 0 }",
            "num_batch_threads must be positive; was 0",
        ),
        ("batch_timeout_micros { value: -1 }", "batch_timeout_micros must be non-negative; was -1"),
        (
            "max_batch_size { value: 8 } allowed_batch_sizes: 2 allowed_batch_sizes: 4",
            "Last entry in allowed_batch_sizes must match max_batch_size; last entry was 4; expected 8",
        ),
        (
            "max_batch_size { value: 8 } allowed_batch_sizes: [4, 2, 8]",
            "monotonically increasing",
        ),
        (  # checked first in TF Serving (WrapSessionForBatching), splitting or not
            "max_batch_size { value: 32 } enable_large_batch_splitting { value: true } "
            "max_execution_batch_size { value: 8 } allowed_batch_sizes: [2, 4, 8]",
            "Last entry in allowed_batch_sizes must match max_batch_size; last entry was 8; expected 32",
        ),
    ],
)
def test_bad_parameters_are_refused(tmp_path, text, message):
    path = tmp_path / "batching.txt"
    path.write_text(text)
    with pytest.raises(InvalidArgument, match=message):
        read_batching_options(str(path), cpu_count=2)


def test_server_will_not_start_with_a_misspelt_parameters_file(tmp_path):
    path = tmp_path / "batching.txt"
    path.write_text("max_batch_size { value: 8 }\nbatch_timeout_micro { value: 0 }\n")
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "serving.model_server",
            "--port=0",
            "--grpc_socket_path=" + str(tmp_path / "s"),
            "--model_name=m",
            f"--model_base_path={tmp_path}",
            "--enable_batching",
            f"--batching_parameters_file={path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 255
    assert (
        f"Failed to start server. Error: INVALID_ARGUMENT: Invalid protobuf file: '{path}'" in result.stdout
    )
    assert "batch_timeout_micro" in result.stderr  # the parser says which field
