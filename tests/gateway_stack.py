"""Helpers for the gateway's fault, auth and observability tests: private model servers and
gateways on free loopback ports (logs kept in files), model versions published the way an
export does it, a model that answers slowly, and a background load loop that records answers.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests

from serving import stack


def publish_version(source: Path, base_path: Path, version: int) -> Path:
    """Copy a version directory next to the others under a name the server ignores, then rename it
    into place in one step, as the export does: a poll never sees half a version."""
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=base_path))
    shutil.copytree(source, staging, dirs_exist_ok=True)
    target = base_path / str(version)
    os.rename(staging, target)
    return target


def export_slow_model(export_dir: Path, delay_seconds: float, per_image: bool = True) -> Path:
    """A SavedModel that takes `delay_seconds` of wall time per Predict, whatever the load:
    it loops on the clock (tf.timestamp), so concurrent requests run side by side (a tf.data
    sleep would run them one after the other). images [N, 28, 28, 1] -> probabilities [N, 10],
    always class 3; with per_image=False, one row [10] for the whole batch (their mean)."""
    import tensorflow as tf

    class SlowModel(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 28, 28, 1], tf.float32, name="images")])
        def serve(self, images):
            start = tf.timestamp()
            [finished] = tf.while_loop(
                lambda now: now - start < delay_seconds, lambda now: [tf.timestamp()], [start]
            )
            classes = tf.fill([tf.shape(images)[0]], 3) + tf.cast(finished * 0, tf.int32)
            probabilities = tf.one_hot(classes, 10)
            return {"probabilities": probabilities if per_image else tf.reduce_mean(probabilities, axis=0)}

    model = SlowModel()
    tf.saved_model.save(model, str(export_dir), signatures={"serving_default": model.serve})
    return export_dir


@dataclass
class ModelServerProcess:
    """A model server subprocess that can be stopped and started again on the same port."""

    config_file: Path
    log_dir: Path
    flags: tuple[str, ...] = ("--file_system_poll_wait_seconds=1",)
    port: int = field(default_factory=stack.free_port)
    process: subprocess.Popen | None = None
    starts: int = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, models: list[str], wait: bool = True) -> None:
        self.starts += 1
        log = open(self.log_dir / f"model_server.{self.starts}.log", "wb")  # noqa: SIM115 - the child owns it
        self.process = stack.start_model_server(
            self.port, self.config_file, *self.flags, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        if wait:
            stack.wait_for_models(self.target, models, self.process)

    def stop(self, grace: float = 15) -> int:
        assert self.process is not None
        stack.stop(self.process, grace=grace)
        return self.process.returncode

    def log_text(self) -> str:
        return (self.log_dir / f"model_server.{self.starts}.log").read_text(errors="replace")


@dataclass
class GatewayProcess:
    """A gunicorn gateway subprocess whose stderr (the JSON log lines) goes to a file."""

    model_server: str
    models_dir: Path
    log_file: Path
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=stack.free_port)
    process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait_path: str = "/healthz") -> None:
        log = open(self.log_file, "wb")  # noqa: SIM115 - the child owns it
        environment = {"GATEWAY_WORKERS": "1", "GATEWAY_THREADS": "8", **self.env}
        self.process = stack.start_gateway(
            self.port,
            self.model_server,
            self.models_dir,
            env=environment,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        stack.wait_for_http(self.url + wait_path, self.process)

    def stop(self, grace: float = 30) -> int:
        assert self.process is not None
        stack.stop(self.process, grace=grace)
        return self.process.returncode

    def log_lines(self) -> list[str]:
        return self.log_file.read_text(errors="replace").splitlines()


def pause(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGSTOP)


def resume(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGCONT)


@dataclass
class Answer:
    status: int  # 0: no HTTP answer (connection refused, reset, client timeout)
    version: int | None
    error: str
    started: float
    seconds: float


class LoadLoop:
    """`threads` clients POSTing one image in a loop until stopped; every answer is recorded."""

    def __init__(
        self,
        url: str,
        payload: bytes,
        threads: int = 4,
        timeout: float = 30,
        headers: dict[str, str] | None = None,
    ):
        self.url, self.payload, self.timeout = url, payload, timeout
        self.headers = {"Content-Type": "image/png", **(headers or {})}
        self.answers: list[Answer] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> LoadLoop:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.stop()

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)

    def _run(self) -> None:
        with requests.Session() as session:
            while not self._stopping.is_set():
                self._record(send(session, self.url, self.payload, self.headers, self.timeout))

    def _record(self, answer: Answer) -> None:
        with self._lock:
            self.answers.append(answer)

    def snapshot(self) -> list[Answer]:
        with self._lock:
            return list(self.answers)


def send(
    session: requests.Session, url: str, payload: bytes, headers: dict[str, str], timeout: float
) -> Answer:
    started = time.monotonic()
    try:
        response = session.post(url, data=payload, headers=headers, timeout=timeout)
    except requests.RequestException as error:
        return Answer(0, None, f"{type(error).__name__}: {error}", started, time.monotonic() - started)
    seconds = time.monotonic() - started
    try:
        body = response.json()
    except ValueError:
        return Answer(response.status_code, None, f"not JSON: {response.text[:200]}", started, seconds)
    if response.status_code == 200:
        return Answer(200, body.get("version"), "", started, seconds)
    return Answer(response.status_code, None, f"{body.get('code')}: {body.get('error')}", started, seconds)


def gunicorn_pids(url: str) -> set[int]:
    """gunicorn's master and workers serving `url` (a worker that died is replaced by a new pid)."""
    import psutil

    port = int(url.rsplit(":", 1)[1])
    holder = next(
        connection.pid
        for connection in psutil.net_connections(kind="tcp")
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port and connection.pid
    )
    master = psutil.Process(holder)  # the socket is shared: this may be a worker
    while (parent := master.parent()) is not None and "serving.gateway.wsgi:app" in parent.cmdline():
        master = parent
    return {master.pid, *(child.pid for child in master.children())}


TOKENS = ("alpha-token", "beta-token")
FILE_TOKEN = "gamma-token"


@pytest.fixture(scope="session")
def secured_gateway(tmp_path_factory, model_server, models_dir):
    """A real gateway (2 gunicorn workers, JSON logs to a file) with bearer tokens from both the
    environment and a file, in front of the session's model server."""
    directory = tmp_path_factory.mktemp("secured-gateway")
    tokens_file = directory / "tokens"
    tokens_file.write_text(f"# one token per line\n{FILE_TOKEN}\n")
    gateway = GatewayProcess(
        model_server,
        models_dir,
        directory / "gateway.log",
        env={
            "GATEWAY_WORKERS": "2",
            "GATEWAY_THREADS": "4",
            "LOG_FORMAT": "json",
            "GATEWAY_TOKENS": ",".join(TOKENS),
            "GATEWAY_TOKENS_FILE": str(tokens_file),
        },
    )
    gateway.start(wait_path="/readyz")
    gateway.tokens_file = tokens_file  # type: ignore[attr-defined]
    try:
        yield gateway
    finally:
        gateway.stop()
