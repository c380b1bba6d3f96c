"""Start the model server and the gateway together (what `make serve` runs), and the
helpers the tests use to start each: subprocesses on loopback, waited on until ready.
"""

from __future__ import annotations

import argparse
import atexit
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc

from serving import model_config
from serving.protos.tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

logger = logging.getLogger(__name__)
ROOT = Path(__file__).resolve().parent.parent
# The environment `make serve` (and `make bench`, and docker's CPU TF Serving) gives the model
# server, set before TensorFlow is imported (it reads them once); see docs/benchmarks.md:
# - TF_ENABLE_ONEDNN_OPTS=1: oneDNN's kernels also on CPUs where TensorFlow leaves them off.
# - TF_ONEDNN_ASSUME_FROZEN_WEIGHTS=1: oneDNN keeps its reordered copy of the weights instead of
#   making it on every run. A model that feeds, computes or assigns its weights would get answers
#   from stale weights: such a model needs it set to 0.
MODEL_SERVER_ENVIRONMENT = {"TF_ENABLE_ONEDNN_OPTS": "1", "TF_ONEDNN_ASSUME_FROZEN_WEIGHTS": "1"}


def model_server_environment() -> dict[str, str]:
    """This process's environment with MODEL_SERVER_ENVIRONMENT, unless it sets those variables itself."""
    return {**MODEL_SERVER_ENVIRONMENT, **os.environ}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_model_server(port: int, config_file: str | Path, *extra_flags: str, **popen) -> subprocess.Popen:
    command = [sys.executable, "-m", "serving.model_server", f"--port={port}",
               f"--model_config_file={config_file}",
               *extra_flags]
    return subprocess.Popen(command, cwd=popen.pop("cwd", ROOT), **popen)


def start_gateway(port: int, model_server: str, models_dir: str | Path, *, host: str = "127.0.0.1",
                  env: dict[str, str] | None = None, **popen) -> subprocess.Popen:
    # The workers' metric files, added up by /metrics; removed when this process exits.
    metrics_dir = tempfile.mkdtemp(prefix="pixelgate-metrics-")
    atexit.register(shutil.rmtree, metrics_dir, ignore_errors=True)
    environment = {**os.environ, "MODEL_SERVER": model_server, "MODEL_BASE_PATH": str(models_dir),
                   "GATEWAY_HOST": host, "GATEWAY_PORT": str(port), "PROMETHEUS_MULTIPROC_DIR": metrics_dir,
                   **(env or {})}
    command = [sys.executable, "-m", "gunicorn", "-c", str(ROOT / "serving" / "gunicorn.conf.py"),
               "serving.gateway.wsgi:app"]
    return subprocess.Popen(command, cwd=ROOT, env=environment, **popen)


def replica_ports(first: int, count: int, taken: tuple[int, ...] = ()) -> list[int]:
    """`count` gRPC ports from `first` on, skipping `taken` (the REST and HTTP ports): 8500, 8502, ..."""
    ports: list[int] = []
    port = first
    while len(ports) < count:
        if port not in taken:
            ports.append(port)
        port += 1
    return ports


def model_server_target(ports: list[int]) -> str:
    """The gateway's MODEL_SERVER for model servers on these loopback ports: gRPC's ipv4: list for several."""
    addresses = ",".join(f"127.0.0.1:{port}" for port in ports)
    return addresses if len(ports) == 1 else f"ipv4:{addresses}"


def wait_for_models(target: str, names: list[str], process: subprocess.Popen, timeout: float = 120) -> None:
    """Block until every model in `names` has an AVAILABLE version on the model server at `target`."""
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        pending = list(names)
        while pending:
            if process.poll() is not None:
                raise RuntimeError(f"the model server exited with status {process.returncode}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"models not AVAILABLE after {timeout:.0f}s: {pending}")
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = pending[0]
            try:
                response = stub.GetModelStatus(request, timeout=2)
                if any(s.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
                       for s in response.model_version_status):
                    pending.pop(0)
                    continue
            except grpc.RpcError:
                pass
            time.sleep(0.2)


def wait_for_http(url: str, process: subprocess.Popen, timeout: float = 60, parse=json.loads):
    """Block until `url` answers 200 with a body `parse` accepts (JSON unless told); return it parsed."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"{url}'s server exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return parse(response.read())
        except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
            if time.monotonic() > deadline:
                raise TimeoutError(f"{url} did not answer 200 within {timeout:.0f}s") from None
            time.sleep(0.2)


def stop(*processes: subprocess.Popen, grace: float = 15) -> None:
    for process in processes:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
    for process in processes:
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# Each Predict waiting for its batch counts against the gRPC threads: the default 8 would cap batches at 8.
GRPC_THREADS_FLAG = "--grpc_max_threads=32"


def batching_flags(parameters_file: Path) -> list[str]:
    """The model server's CPU batching setup, as `make serve` runs it and `make bench` measures it."""
    return [
        "--enable_batching",
        f"--batching_parameters_file={parameters_file.resolve()}",
        GRPC_THREADS_FLAG,
        # One core per batch, and one batch thread per core (the parameters file leaves
        # num_batch_threads to its default, the core count): batches run side by side instead of
        # each spreading small ops over every core (docs/benchmarks.md).
        "--tensorflow_intra_op_parallelism=1",
    ]


DEFAULT_MODEL_CONFIG_FILE = "serving/config/models.config"


def _read_config(config_file: Path):
    from google.protobuf import text_format

    from serving.protos.tensorflow_serving.config import model_server_config_pb2

    return text_format.Parse(config_file.read_text(), model_server_config_pb2.ModelServerConfig())


def model_names_in_config(config_file: Path) -> list[str]:
    return [model.name for model in _read_config(config_file).model_config_list.config]


# How often `make serve` looks for changes in --models-dir's models.config and model folders, and how
# often its model servers re-read the config it writes them (--model_config_file_poll_wait_seconds).
MODEL_CONFIG_POLL_SECONDS = 2


def config_for_models_dir(models_dir: Path):
    """The config `--models-dir` alone means: the models its registry lists (serving/model_config.py),
    or without one serving/config/models.config's models, in either case those with an exported
    version in models_dir, loaded from there."""
    config = model_config.served_config(models_dir)
    if config is not None:
        return config
    config = _read_config(ROOT / DEFAULT_MODEL_CONFIG_FILE)
    models = config.model_config_list.config
    kept = [model for model in models if model_config.has_exported_version(models_dir / model.name)]
    for model in kept:
        model.base_path = str((models_dir / model.name).resolve())
    del models[:]
    models.extend(kept)
    return config


class ServedModelConfig:
    """The model config `make serve` gives its model servers and its gateway for `--models-dir`,
    written to a temporary file and rewritten (atomically) whenever the folder's registry or
    model folders change, so that a model exported into the folder is served without a restart."""

    HEADER = ("# Written by `make serve` (serving/stack.py) from --models-dir and rewritten when it\n"
              "# changes: edit that folder's models.config (python -m serving.model_config), not this.\n")

    def __init__(self, models_dir: Path):
        self.models_dir = models_dir
        directory = Path(tempfile.mkdtemp(prefix="pixelgate-config-"))
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        self.path = directory / "models.config"
        self._written = ""
        self._problem = ""
        try:
            self.config = config_for_models_dir(models_dir)
        except model_config.RegistryError as error:
            raise SystemExit(f"{error}") from None
        names = [model.name for model in self.config.model_config_list.config]
        if not names:
            raise SystemExit(f"no exported models in {models_dir}: train one first (make train), "
                             "or give --model-config-file")
        self._write(self.config)

    def update(self) -> None:
        """Rewrite the file if the folder now means another config; a broken registry keeps the last."""
        try:
            config = config_for_models_dir(self.models_dir)
        except model_config.RegistryError as error:
            if str(error) != self._problem:
                logger.error("%s; serving the models it listed before", error)
                self._problem = str(error)
            return
        self._problem = ""
        self._write(config)

    def follow(self, stopping: threading.Event) -> threading.Thread:
        """update() every MODEL_CONFIG_POLL_SECONDS in a thread, until `stopping` is set."""
        def run() -> None:
            while not stopping.wait(MODEL_CONFIG_POLL_SECONDS):
                try:
                    self.update()
                except OSError as error:  # e.g. the temporary folder removed under us; try again later
                    logger.error("cannot write %s: %s", self.path, error)

        thread = threading.Thread(target=run, name="model-config-follower", daemon=True)
        thread.start()
        return thread

    def _write(self, config) -> None:
        from google.protobuf import text_format

        text = text_format.MessageToString(config)
        if text == self._written:
            return
        model_config.write_config_atomically(self.path, config, self.HEADER)
        names = [model.name for model in config.model_config_list.config]
        logger.info("serving %s from %s", ", ".join(names) or "no models", self.models_dir)
        self._written, self.config = text, config


def warn_about_other_base_paths(config, models_dir: Path) -> None:
    """The gateway reads each model's assets from models_dir/<name>; say so when the model server
    loads that model from somewhere else (its labels could be another model's)."""
    for model in config.model_config_list.config:
        # A relative base_path is the model server's, which starts in ROOT (start_model_server).
        loaded, assets = (ROOT / model.base_path).resolve(), (models_dir / model.name).resolve()
        if loaded != assets:
            logger.warning("model %s: the model server loads %s, the gateway reads its assets from %s",
                           model.name, loaded, assets)


def _replica_count(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(
            f"the number of model servers (REPLICAS) must be 1 or more, not {text!r}")
    return int(text)


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Run the model server (gRPC) and the gateway (HTTP) together.")
    # Without one, serving/config/models.config's models, loaded from --models-dir.
    parser.add_argument("--model-config-file", default=os.environ.get("MODEL_CONFIG_FILE"))
    parser.add_argument("--models-dir", default=os.environ.get("MODEL_BASE_PATH", "models"))
    parser.add_argument("--grpc-port", type=int, default=os.environ.get("MODEL_SERVER_PORT", "8500"))
    # TF Serving's REST API on the model server (0: off), as `docker run -p 8501:8501 tensorflow/serving`.
    parser.add_argument("--rest-port", type=int, default=os.environ.get("MODEL_SERVER_REST_PORT", "8501"))
    parser.add_argument("--http-port", type=int, default=os.environ.get("GATEWAY_PORT", "8000"))
    # Server-side dynamic batching with the CPU parameters tuned in docs/benchmarks.md ("" turns it off).
    # The checkout's own file by default, whatever the working directory (a relative default failed as
    # "the model server exited ... A port in use?" when started from elsewhere).
    parser.add_argument("--batching-parameters-file", default=os.environ.get(
        "BATCHING_PARAMETERS_FILE", str(ROOT / "serving" / "config" / "batching_parameters.txt")))
    parser.add_argument("--host", default=os.environ.get("GATEWAY_HOST", "0.0.0.0"))
    # Model servers behind the gateway, on gRPC ports from --grpc-port on (REST on the first only).
    # A string default goes through `type` too: REPLICAS=two is a usage error, not a traceback.
    parser.add_argument("--replicas", type=_replica_count, default=os.environ.get("REPLICAS") or "1")
    args = parser.parse_args()
    if args.batching_parameters_file and not Path(args.batching_parameters_file).is_file():
        parser.error(f"--batching-parameters-file {args.batching_parameters_file}: no such file "
                     "(give an existing BatchingParameters text file, or '' for no batching)")
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(message)s")

    models_dir = Path(args.models_dir)
    served = None
    if args.model_config_file:
        config_file = Path(args.model_config_file)
        config = _read_config(config_file)
        warn_about_other_base_paths(config, models_dir)
    else:
        served = ServedModelConfig(models_dir)
        config_file, config = served.path, served.config
    names = [model.name for model in config.model_config_list.config]
    flags = [f"--rest_api_port={args.rest_port}"]
    # The model servers re-read the config file, as TF Serving does: a model added there is served.
    flags.append(f"--model_config_file_poll_wait_seconds={MODEL_CONFIG_POLL_SECONDS}")
    if args.batching_parameters_file:
        flags += batching_flags(Path(args.batching_parameters_file))
    grpc_ports = replica_ports(args.grpc_port, args.replicas, (args.rest_port, args.http_port))
    # flags[0] is the REST port: the first model server's only (the others' stays 0, off).
    model_servers = [start_model_server(port, config_file.resolve(),
                                        *(flags if index == 0 else flags[1:]), env=model_server_environment())
                     for index, port in enumerate(grpc_ports)]
    gateway = None
    stopping = False
    following = threading.Event()
    if served is not None:
        served.follow(following)

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    # Installed explicitly: a shell that starts us in the background leaves SIGINT ignored.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        for port, model_server in zip(grpc_ports, model_servers, strict=True):
            wait_for_models(f"127.0.0.1:{port}", names, model_server)
        # The gateway serves the models the config file lists (re-read as it changes), not every
        # folder under --models-dir (MODELS, when set, takes precedence).
        gateway = start_gateway(args.http_port, model_server_target(grpc_ports), models_dir.resolve(),
                                host=args.host, env={"MODEL_CONFIG_FILE": str(config_file.resolve())})
        ready = wait_for_http(f"http://127.0.0.1:{args.http_port}/readyz", gateway)
        url = f"http://localhost:{args.http_port}"
        rest = (f"  model server (REST, TF Serving API): http://localhost:{args.rest_port}\n"
                if args.rest_port else "")
        print(f"\npixelgate is ready: models {ready['models']}\n"
              f"  model server (gRPC, TF Serving API): "
              f"{', '.join(f'localhost:{port}' for port in grpc_ports)}\n"
              f"{rest}"
              f"  gateway (HTTP):                      {url}\n\n"
              f"Try:\n  curl -F image=@seven.png {url}/v1/models/mnist:predict\n"
              f"  curl {url}/v1/models\n\nCtrl-C stops them all.\n", flush=True)
        # One of several model servers dying leaves the others serving (the gateway's calls move to
        # them): the stack stops with the gateway or the last model server.
        running, ended = list(model_servers), None
        while ended is None:
            time.sleep(0.5)
            if gateway.poll() is not None:
                ended = gateway
            for process in [process for process in running if process.poll() is not None]:
                running.remove(process)
                if running and process.returncode != 0:
                    logger.error("the model server on port %s exited with status %s; the gateway uses the "
                                 "other %d", grpc_ports[model_servers.index(process)], process.returncode,
                                 len(running))
                else:
                    ended = process
        if ended.returncode == 0:  # stopped by a signal sent to the whole process group
            print("\nstopping...", flush=True)
            return 0
        which = ("gateway" if ended is gateway
                 else f"model server on port {grpc_ports[model_servers.index(ended)]}")
        logger.error("the %s exited with status %s; stopping", which, ended.returncode)
        return 1
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
        return 0
    except (RuntimeError, TimeoutError) as error:  # the log above says why; a traceback would not
        logger.error("%s. A port in use? --grpc-port/--rest-port/--http-port (MODEL_SERVER_PORT, "
                     "MODEL_SERVER_REST_PORT, GATEWAY_PORT) choose others", error)
        return 1
    finally:
        following.set()
        stop(*[p for p in (gateway, *model_servers) if p is not None])


if __name__ == "__main__":
    sys.exit(main())
