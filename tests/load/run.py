"""`make loadtest`: Locust, headless, against the gateway at --host. With no --host given and
no gateway answering at the default one, it starts a stack of its own (quick models trained
if missing, as `make serve` does, on free ports) and stops it afterwards. Exits with Locust's
code: non-zero when a service-level objective was missed.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from serving import stack  # noqa: E402

READY_WAIT_SECONDS = 30  # how long a gateway that answers but is not ready yet gets


def locust_defaults() -> dict:
    with open(ROOT / "pyproject.toml", "rb") as file:
        return tomllib.load(file)["tool"]["locust"]


def readiness(host: str) -> int | None:
    """The status /readyz answers with, or None when nothing answers."""
    try:
        with urllib.request.urlopen(f"{host.rstrip('/')}/readyz", timeout=3) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, OSError):
        return None


def wait_until_ready(host: str, seconds: float) -> int | None:
    deadline = time.monotonic() + seconds
    status = readiness(host)
    while status not in (200, None) and time.monotonic() < deadline:
        time.sleep(1)
        status = readiness(host)
    return status


@contextmanager
def own_stack(log_path: Path):
    """A model server and a gateway on free loopback ports, as `make serve` starts them."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        subprocess.run(
            [
                sys.executable,
                "-m",
                "training",
                "train",
                "--model",
                "all",
                "--profile",
                "quick",
                "--if-missing",
            ],
            cwd=ROOT,
            check=True,
        )
        grpc_port, http_port = stack.free_port(), stack.free_port()
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "serving.stack",
                f"--grpc-port={grpc_port}",
                f"--http-port={http_port}",
                "--rest-port=0",  # the model server's REST API is not load-tested; keep :8501 free
                "--host=127.0.0.1",
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            host = f"http://127.0.0.1:{http_port}"
            ready = stack.wait_for_http(f"{host}/readyz", process, timeout=300)
            print(
                f"started a stack for this run (log: {log_path}): gateway {host}, model server "
                f"127.0.0.1:{grpc_port}, models {json.dumps(ready['models'])}",
                flush=True,
            )
            yield host, f"127.0.0.1:{grpc_port}"
        finally:
            stack.stop(process)


def run_locust(host: str, grpc_target: str | None, locust_arguments: list[str], workers: int = 0) -> int:
    command = [
        sys.executable,
        "-m",
        "locust",
        "--headless",
        "--only-summary",
        "--host",
        host,
        *(["--grpc-target", grpc_target] if grpc_target else []),
        # Locust's distributed mode on this machine: it forks `workers` worker processes and
        # becomes their master, which gathers their stats, writes the reports and judges the SLOs.
        *(["--processes", str(workers)] if workers else []),
        *locust_arguments,
    ]
    print("$", " ".join(command), flush=True)
    return subprocess.call(command, cwd=ROOT)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, epilog="Other arguments go to Locust as they are.")
    parser.add_argument(
        "--host", help="gateway URL (default: [tool.locust] host); given, no stack is started"
    )
    parser.add_argument("--grpc-target", help="model server host:port for the gRPC user")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="Locust worker processes under a master (default 0: one process does all); -1: one per CPU core",
    )
    args, locust_arguments = parser.parse_known_args(argv)

    host = args.host or locust_defaults()["host"]
    status = wait_until_ready(host, READY_WAIT_SECONDS)
    # A stack that is there, even broken, is what gets tested; one is started only for the default host.
    if status is not None or args.host:
        if status != 200:
            print(f"{host}/readyz answers {status or 'nothing'}; load-testing it anyway", flush=True)
        return run_locust(host, args.grpc_target, locust_arguments, args.workers)
    print(f"nothing answers at {host}; starting a stack", flush=True)
    with own_stack(ROOT / "reports" / "loadtest-stack.log") as (own_host, own_grpc_target):
        return run_locust(own_host, args.grpc_target or own_grpc_target, locust_arguments, args.workers)


if __name__ == "__main__":
    sys.exit(main())
