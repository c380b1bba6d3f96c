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
import time
import urllib.error
import urllib.request
from pathlib import Path

import grpc

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


def wait_for_http(url: str, process: subprocess.Popen, timeout: float = 60) -> dict:
    """Block until `url` answers 200; return its JSON."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the gateway exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                return json.loads(response.read())
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


def config_in_models_dir(config, models_dir: Path) -> Path:
    """The config `--models-dir` alone means: `config` (changed in place) keeping the models that have
    a folder in `models_dir`, each base_path moved there, written to a temporary file."""
    from google.protobuf import text_format

    models = config.model_config_list.config
    kept = [model for model in models if (models_dir / model.name).is_dir()]
    if not kept:
        raise SystemExit(f"no model folders ({', '.join(m.name for m in models)}) in {models_dir}: "
                         "train them first (make train), or give --model-config-file")
    if len(kept) < len(models):
        missing = sorted({model.name for model in models} - {model.name for model in kept})
        logger.info("serving %s; no folder in %s for %s", ", ".join(m.name for m in kept), models_dir,
                    ", ".join(missing))
    for model in kept:
        model.base_path = str((models_dir / model.name).resolve())
    del models[:]
    models.extend(kept)
    directory = Path(tempfile.mkdtemp(prefix="pixelgate-config-"))
    atexit.register(shutil.rmtree, directory, ignore_errors=True)
    written = directory / "models.config"
    written.write_text(text_format.MessageToString(config))
    return written


def warn_about_other_base_paths(config, models_dir: Path) -> None:
    """The gateway reads each model's assets from models_dir/<name>; say so when the model server
    loads that model from somewhere else (its labels could be another model's)."""
    for model in config.model_config_list.config:
        # A relative base_path is the model server's, which starts in ROOT (start_model_server).
        loaded, assets = (ROOT / model.base_path).resolve(), (models_dir / model.name).resolve()
        if loaded != assets:
            logger.warning("model %s: the model server loads %s, the gateway reads its assets from %s",
                           model.name, loaded, assets)


def main() -> int:
    parser = argparse.ArgumentParser(
        description="Run the model server (gRPC) and the gateway (HTTP) together.")
    # Without one, serving/config/models.config's models, loaded from --models-dir.
    parser.add_argument("--model-config-file", default=os.environ.get("MODEL_CONFIG_FILE"))
    parser.add_argument("--models-dir", default=os.environ.get("MODEL_BASE_PATH", "models"))
    parser.add_argument("--grpc-port", type=int, default=int(os.environ.get("MODEL_SERVER_PORT", 8500)))
    # TF Serving's REST API on the model server (0: off), as `docker run -p 8501:8501 tensorflow/serving`.
    parser.add_argument("--rest-port", type=int, default=int(os.environ.get("MODEL_SERVER_REST_PORT", 8501)))
    parser.add_argument("--http-port", type=int, default=int(os.environ.get("GATEWAY_PORT", 8000)))
    # Server-side dynamic batching with the CPU parameters tuned in docs/benchmarks.md ("" turns it off).
    parser.add_argument("--batching-parameters-file", default=os.environ.get(
        "BATCHING_PARAMETERS_FILE", "serving/config/batching_parameters.txt"))
    parser.add_argument("--host", default=os.environ.get("GATEWAY_HOST", "0.0.0.0"))
    args = parser.parse_args()
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO"),
                        format="%(asctime)s %(levelname)s %(message)s")

    models_dir = Path(args.models_dir)
    if args.model_config_file:
        config_file = Path(args.model_config_file)
        config = _read_config(config_file)
        warn_about_other_base_paths(config, models_dir)
    else:
        config = _read_config(ROOT / DEFAULT_MODEL_CONFIG_FILE)
        config_file = config_in_models_dir(config, models_dir)
    names = [model.name for model in config.model_config_list.config]
    flags = [f"--rest_api_port={args.rest_port}"]
    if args.batching_parameters_file:
        flags += batching_flags(Path(args.batching_parameters_file))
    model_server = start_model_server(args.grpc_port, config_file.resolve(), *flags,
                                      env=model_server_environment())
    gateway = None
    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    # Installed explicitly: a shell that starts us in the background leaves SIGINT ignored.
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        wait_for_models(f"127.0.0.1:{args.grpc_port}", names, model_server)
        # The gateway serves the models the config file lists, not every folder under --models-dir.
        gateway = start_gateway(args.http_port, f"127.0.0.1:{args.grpc_port}", models_dir.resolve(),
                                host=args.host, env={"MODELS": os.environ.get("MODELS") or ",".join(names)})
        ready = wait_for_http(f"http://127.0.0.1:{args.http_port}/readyz", gateway)
        url = f"http://localhost:{args.http_port}"
        rest = (f"  model server (REST, TF Serving API): http://localhost:{args.rest_port}\n"
                if args.rest_port else "")
        print(f"\npixelgate is ready: models {ready['models']}\n"
              f"  model server (gRPC, TF Serving API): localhost:{args.grpc_port}\n"
              f"{rest}"
              f"  gateway (HTTP):                      {url}\n\n"
              f"Try:\n  curl -F image=@seven.png {url}/v1/models/mnist:predict\n"
              f"  curl {url}/v1/models\n\nCtrl-C stops both.\n", flush=True)
        while model_server.poll() is None and gateway.poll() is None:
            time.sleep(0.5)
        ended = model_server if model_server.poll() is not None else gateway
        if ended.returncode == 0:  # stopped by a signal sent to the whole process group
            print("\nstopping...", flush=True)
            return 0
        which = "model server" if ended is model_server else "gateway"
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
        stop(*[p for p in (gateway, model_server) if p is not None])


if __name__ == "__main__":
    sys.exit(main())
