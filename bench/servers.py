"""The servers `python -m bench` measures, each started on a free port for a `with` block:
the embedded model server, the gateway, the gRPC floor and the tutorial Flask app; and the
models they serve, trained once when missing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bench.processes import process_tree
from bench.workload import MULTIPART_CONTENT_TYPE, Workload
from serving import stack

logger = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parent.parent
# What each process of the tutorial app prints once its model is loaded (bench/tutorial_app.py).
TUTORIAL_LOADED = "tutorial app: model loaded"
METRICS_PATH = "/monitoring/prometheus/metrics"  # serving/config/monitoring.config's
PROCESSED_BATCH_SIZE = ":tensorflow:serving:batching_session:processed_batch_size"
PADDING_SIZE = ":tensorflow:serving:batching_session:padding_size"


def ensure_models(names: list[str], models_dir: Path, fallback_dir: Path, data_dir: str) -> Path:
    """The directory holding every model: `models_dir` if complete, else `fallback_dir`, trained as needed."""

    def has_version(directory: Path, name: str) -> bool:
        return (directory / name).is_dir() and any(p.name.isdigit() for p in (directory / name).iterdir())

    if all(has_version(models_dir, name) for name in names):
        return models_dir.resolve()
    for name in names:
        if not has_version(fallback_dir, name):
            logger.info("training a quick %s model into %s (once; later runs reuse it)", name, fallback_dir)
            subprocess.run(
                [sys.executable, "-m", "training", "train", "--model", name, "--profile", "quick",
                 "--models-dir", str(fallback_dir), "--data-dir", data_dir],
                cwd=ROOT,
                check=True,
            )
    return fallback_dir.resolve()


def write_model_config(names: list[str], models_dir: Path, path: Path) -> Path:
    entries = "".join(
        f'  config {{ name: "{name}" base_path: "{models_dir / name}" model_platform: "tensorflow" }}\n'
        for name in names
    )
    path.write_text(f"model_config_list {{\n{entries}}}\n")
    return path


class model_server:  # noqa: N801 - used as a context manager, reads like one
    """The embedded model server on a free port, for the length of a `with` block. `metrics`: with its
    REST port and Prometheus page too (`processed_batches`)."""

    def __init__(self, config_file: Path, log_path: Path, *flags: str, metrics: bool = False) -> None:
        self.config_file, self.log_path, self.flags, self.metrics = config_file, log_path, flags, metrics
        self.metrics_url: str | None = None

    def __enter__(self) -> model_server:
        port = stack.free_port()
        logger.info("starting the model server %s", " ".join(self.flags))
        self.log = self.log_path.open("w")
        monitoring = []
        if self.metrics:
            rest_port = stack.free_port()
            self.metrics_url = f"http://127.0.0.1:{rest_port}{METRICS_PATH}"
            monitoring = [f"--rest_api_port={rest_port}",
                          f"--monitoring_config_file={ROOT / 'serving' / 'config' / 'monitoring.config'}"]
        self.process = stack.start_model_server(
            port,
            self.config_file,
            "--file_system_poll_wait_seconds=0",
            *monitoring,
            *self.flags,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=stack.model_server_environment(),  # as `make serve` runs it
        )
        names = stack.model_names_in_config(self.config_file)
        stack.wait_for_models(f"127.0.0.1:{port}", names, self.process, timeout=300)
        if self.metrics_url:  # its REST port opens beside gRPC's: fail here, not in a later phase
            stack.wait_for_http(self.metrics_url, self.process, timeout=30, parse=bytes.decode)
        self.target, self.pid = f"127.0.0.1:{port}", self.process.pid
        return self

    def __exit__(self, *exc_info: object) -> None:
        stack.stop(self.process)
        self.log.close()

    def processed_batches(self) -> Batches:
        """What the server's batching has run so far, every model's together (TF Serving's histograms, as
        its Prometheus page shows them)."""
        if self.metrics_url is None:
            raise RuntimeError("started without metrics=True: no Prometheus page to read")
        with urllib.request.urlopen(self.metrics_url, timeout=10) as response:
            text = response.read().decode()
        samples = [sample for family in text_string_to_metric_families(text)
                   if family.name in (PROCESSED_BATCH_SIZE, PADDING_SIZE) for sample in family.samples]
        return Batches(
            sizes={float(sample.labels["le"]): sample.value for sample in samples
                   if sample.name == f"{PROCESSED_BATCH_SIZE}_bucket"},
            rows=sum(sample.value for sample in samples if sample.name == f"{PROCESSED_BATCH_SIZE}_sum"),
            padding=sum(sample.value for sample in samples if sample.name == f"{PADDING_SIZE}_sum"),
        )


@dataclasses.dataclass(frozen=True)
class Batches:
    """The batches a model server ran: cumulative counts by size (rows, padding included; the histogram's
    bucket bounds 1, 2, 4, ...), their rows, and the padding rows among them."""

    sizes: dict[float, float]
    rows: float
    padding: float

    def since(self, earlier: Batches) -> tuple[dict[int, int], float]:
        """({bucket bound: batches} run since `earlier`, the images in them less padding)."""
        bounds = sorted(self.sizes)
        cumulative = [self.sizes[bound] - earlier.sizes.get(bound, 0.0) for bound in bounds]
        counts = {}
        for index, bound in enumerate(bounds):
            count = cumulative[index] - (cumulative[index - 1] if index else 0.0)
            # A batch past the largest finite bound counts at that bound; none is expected, since
            # max_execution_batch_size is far below it.
            if count:
                counts[int(bound) if math.isfinite(bound) else int(bounds[-2])] = int(count)
        return counts, (self.rows - earlier.rows) - (self.padding - earlier.padding)


@contextlib.contextmanager
def gateway(
    model_server_target: str, models_dir: Path, environment: dict[str, str], log_path: Path
) -> Iterator[tuple[str, subprocess.Popen]]:
    """The gateway with all its workers forked: (its base URL, its gunicorn master)."""
    port = stack.free_port()
    logger.info("starting the gateway %s", environment)
    with log_path.open("w") as log:
        process = stack.start_gateway(
            port, model_server_target, models_dir, env=environment, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            base = f"http://127.0.0.1:{port}"
            stack.wait_for_http(f"{base}/readyz", process)
            # The first worker up answers /readyz while gunicorn may still be forking the others,
            # whose CPU would then count as other processes'.
            workers = int(environment.get("GATEWAY_WORKERS") or os.environ.get("GATEWAY_WORKERS")
                          or len(os.sched_getaffinity(0)))  # gunicorn.conf.py's default
            deadline = time.monotonic() + 60
            while len(process_tree(process.pid)) < 1 + workers and process.poll() is None:
                if time.monotonic() > deadline:
                    logger.warning("the gateway has %d of %d workers after 60 s; their CPU counts as others'",
                                   len(process_tree(process.pid)) - 1, workers)
                    break
                time.sleep(0.1)
            yield base, process
        finally:
            stack.stop(process)


@contextlib.contextmanager
def grpc_floor(model: str, logs: Path) -> Iterator[tuple[str, int]]:
    """bench/grpc_floor.py's PredictionService, answering: (its target, its pid)."""
    port = stack.free_port()
    with (logs / "floor.log").open("w") as log:
        floor = subprocess.Popen(
            [sys.executable, "-m", "bench.grpc_floor", f"--port={port}", f"--model={model}"],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
        )
        assert floor.stdout is not None  # stdout=PIPE
        try:
            if floor.stdout.readline().strip() != "ready":
                raise RuntimeError(f"the gRPC floor server did not start; see {logs / 'floor.log'}")
            yield f"127.0.0.1:{port}", floor.pid
        finally:
            stack.stop(floor)
            floor.stdout.close()


@dataclasses.dataclass(frozen=True)
class TutorialLayout:
    """How the tutorial app runs on gunicorn: gthread workers, threads each, TensorFlow's threads."""

    workers: int
    threads: int

    @property
    def tensorflow_threads(self) -> int:
        # The cores shared out among the workers, so that their TensorFlow pools do not
        # oversubscribe the machine (each one's default is every core, intra- and inter-op).
        return max(1, len(os.sched_getaffinity(0)) // self.workers)

    def describe(self) -> str:
        return (
            f"gunicorn, {self.workers} gthread workers x {self.threads} threads, each with "
            f"{self.tensorflow_threads} TensorFlow intra-op and inter-op thread(s)"
        )


@contextlib.contextmanager
def tutorial_app(
    workload: Workload, models_dir: Path, logs: Path, layout: TutorialLayout | None = None
) -> Iterator[tuple[str, list[int]]]:
    """The tutorial Flask app serving `workload`'s model, answering: (its predict URL, its pids).

    On gunicorn with `layout`; without one, on Flask's development server (one process)."""
    port = stack.free_port()
    version = max(int(p.name) for p in (models_dir / workload.model).iterdir() if p.name.isdigit())
    model_dir = models_dir / workload.model / str(version)
    if layout is None:
        command = [
            sys.executable, "-m", "bench.tutorial_app", "--model-dir", str(model_dir), "--port", str(port)
        ]
        log_path, workers = logs / f"tutorial-dev-{workload.model}.log", 1
    else:
        command = [
            sys.executable, "-m", "gunicorn",
            "--bind", f"127.0.0.1:{port}",
            "--workers", str(layout.workers),
            "--worker-class", "gthread",
            "--threads", str(layout.threads),
            "--reuse-port",  # a socket per worker: the kernel spreads connections evenly over them
            "--no-control-socket",  # gunicorn's management socket: one path per user, the gateway's
            "--timeout", "300",  # each worker imports TensorFlow and loads the model before answering
            f"bench.tutorial_app:create_app(model_dir={str(model_dir)!r}, "
            f"tensorflow_threads={layout.tensorflow_threads})",
        ]  # no --preload: TensorFlow's thread pools do not survive a fork, so each worker loads the model
        log_path, workers = logs / f"tutorial-{workload.model}.log", layout.workers
    logger.info("starting the tutorial Flask app for %s: %s", workload.model,
                layout.describe() if layout else "Flask's development server")
    with log_path.open("w") as log:
        app = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for_line(log_path, TUTORIAL_LOADED, workers, app)
            url = f"http://127.0.0.1:{port}/predict"
            post_until_ok(url, workload, app)
            yield url, process_tree(app.pid)
        finally:
            stack.stop(app)


def wait_for_line(
    log_path: Path, line: str, count: int, process: subprocess.Popen, timeout: float = 300
) -> None:
    """Wait until `line` appears `count` times in the log: every worker of a server has loaded."""
    deadline = time.monotonic() + timeout
    while log_path.read_text(errors="replace").count(line) < count:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited with status {process.returncode}; see {log_path}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{count} workers did not load within {timeout:.0f}s; see {log_path}")
        time.sleep(0.2)


def post_until_ok(url: str, workload: Workload, process: subprocess.Popen, timeout: float = 300) -> None:
    """Wait for the server to answer one real upload (and warm it with a few more)."""
    body = workload.multipart_bodies()[0]
    deadline = time.monotonic() + timeout
    answered = 0
    while answered < 5:
        if process.poll() is not None:
            raise RuntimeError(f"{url}: the server exited with status {process.returncode}")
        request = urllib.request.Request(url, data=body, headers={"Content-Type": MULTIPART_CONTENT_TYPE})
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                json.loads(response.read())
                answered += 1
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer within {timeout:.0f}s") from None
            time.sleep(0.3)
