"""`python -m bench` (what `make bench` runs): one bounded run that measures, per model, the
in-process limit, the model server over gRPC with and without batching, the gateway end to end
and the tutorial Flask app, then prints the table and writes it to bench-results/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import statistics
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime
from functools import partial
from pathlib import Path

import grpc

from bench import grpc_load, http_load, report
from bench.cpu import cpu_description, process_tree, with_cpu
from bench.stats import LoadResult
from bench.workload import MULTIPART_CONTENT_TYPE, Workload, load_workload
from serving import stack

logger = logging.getLogger("bench")
ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = ROOT.parent / "shared" / "datasets"
BATCHING_PARAMETERS = ROOT / "serving" / "config" / "batching_parameters.txt"
# The small-model configuration: the same batching file, with one TensorFlow thread for the ops
# of every batch (the batch threads queue their runs on it), leaving the other cores to gRPC.
SMALL_MODEL_FLAGS = ["--tensorflow_inter_op_parallelism=1"]
# The unmeasured load before each measured HTTP run (h2load's runs have one of their own).
WARMUP_SECONDS = 1.0


def parse_arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--models", nargs="+", default=["mnist", "cifar10"])
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=Path(os.environ.get("MODEL_BASE_PATH", ROOT / "models")),
        help="exported models; models missing there are trained (quick profile) into bench-results/models",
    )
    parser.add_argument("--data-dir", default=os.environ.get("DATA_DIR", str(DEFAULT_DATA_DIR)))
    parser.add_argument("--results-dir", type=Path, default=ROOT / "bench-results")
    parser.add_argument("--seconds", type=float, default=4.0, help="length of each measured run")
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run each fixed-concurrency load this many times and keep the fastest "
        "(on a shared machine, the least disturbed)",
    )
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument(
        "--grpc-load",
        choices=["h2load", "grpc.aio"],
        default="h2load",
        help="load generator for the model server's fixed-concurrency runs (h2load: C, from Debian's "
        "nghttp2-client, installed when missing; grpc.aio: Python, costs the shared cores ~0.15 ms/request)",
    )
    parser.add_argument("--http-concurrency", type=int, nargs="+", default=[1, 8, 16, 32])
    parser.add_argument(
        "--server-flags",
        nargs="*",
        default=[],
        help="extra tensorflow_model_server flags for every model-server run",
    )
    parser.add_argument("--batching-parameters", type=Path, default=BATCHING_PARAMETERS)
    parser.add_argument(
        "--gateway-workers", help="GATEWAY_WORKERS for the gateway (default: gunicorn.conf.py's)"
    )
    parser.add_argument(
        "--gateway-threads", help="GATEWAY_THREADS for the gateway (default: gunicorn.conf.py's)"
    )
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=["inprocess", "server", "batching", "small", "floor", "gateway", "tutorial"],
        help="phases to leave out (server: the model server without batching; small: with the "
        "small-model batching configuration)",
    )
    return parser.parse_args()


def main() -> int:
    args = parse_arguments()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench: %(message)s", datefmt="%H:%M:%S")
    started = time.monotonic()
    models_dir = ensure_models(args.models, args.models_dir, args.results_dir / "models", args.data_dir)
    workloads = {name: load_workload(name, args.data_dir, models_dir) for name in args.models}
    logs = args.results_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    wrk = http_load.find_wrk()
    args.h2load = grpc_load.find_h2load() if args.grpc_load == "h2load" else None
    # The last minute's average, the run before this one included; whether other processes
    # shared the cores during a run is measured per run (bench.cpu) and noted in the report.
    load = os.getloadavg()[0]
    result = report.Report(
        header=[
            f"pixelgate benchmark, {datetime.now():%Y-%m-%d %H:%M}, {os.cpu_count()} CPU cores "
            f"({cpu_description()}), load average {load:.1f} at start",
            f"models from {models_dir}; {args.seconds:.0f} s per run, best of {args.rounds}; HTTP load: "
            f"{'wrk (1 thread)' if wrk else 'python asyncio client (wrk not found)'}; gRPC load: "
            f"{grpc_load_name(args)} (fixed rates: grpc.aio)",
            "req/s = images/s (one image per request); latencies from the client, including queueing; "
            "CPU ms = CPU time per request of the serving processes (model server, + gateway workers in "
            "gateway rows); load ms = CPU time per request of the load generator, on the same cores",
        ]
    )
    result.gateway_footprint = gateway_import_footprint()
    if "inprocess" not in args.skip:
        for name in args.models:
            result.in_process[name] = in_process_limit(name, models_dir, args.data_dir, args.seconds)
    config_file = write_model_config(args.models, models_dir, args.results_dir / "models.config")
    if "server" not in args.skip:
        with model_server(
            config_file,
            logs / "server.log",
            "--enable_model_warmup=false",
            stack.GRPC_THREADS_FLAG,  # as many Predicts in flight as the batching server takes
            *args.server_flags,
        ) as server:
            for workload in workloads.values():
                result.first_requests.append(first_request_latency(server.target, workload, warmup="off"))
                grpc_runs(args, result, report.SERVER, server.target, server.pid, workload)
    batching_flags = stack.batching_flags(args.batching_parameters)
    tutorial_results: list[LoadResult] = []  # measured in turns with the gateway's runs
    with model_server(
        config_file, logs / "server-batching.log", *batching_flags, *args.server_flags
    ) as server:
        for name, workload in workloads.items():
            result.first_requests.append(first_request_latency(server.target, workload, warmup="on"))
            if "batching" in args.skip:
                continue
            grpc_runs(args, result, report.SERVER_BATCHING, server.target, server.pid, workload)
            saturation = result.best(report.SERVER_BATCHING, name)
            if saturation:
                run = partial(
                    grpc_load.run_open_loop,
                    server.target,
                    workload.predict_requests(),
                    saturation.throughput / 2,
                    args.seconds,
                    label=report.SERVER_BATCHING,
                    model=name,
                )
                result.results.append(with_cpu([server.pid], run))
        if "gateway" not in args.skip:
            tutorial_results = run_gateway(args, result, workloads, server, models_dir, wrk, logs)
    if "small" not in args.skip:
        with model_server(
            config_file,
            logs / "server-small.log",
            *batching_flags,
            *SMALL_MODEL_FLAGS,
            *args.server_flags,
        ) as server:
            for workload in workloads.values():
                grpc_runs(args, result, report.SERVER_SMALL, server.target, server.pid, workload, [32])
    if "floor" not in args.skip:
        run_floor(args, result, workloads, logs)
    if "tutorial" not in args.skip and "gateway" not in args.skip:
        result.results.extend(tutorial_results)
    elif "tutorial" not in args.skip:
        for workload in workloads.values():
            run_tutorial(args, result, workload, models_dir, wrk, logs)
    result.notes.append(f"the whole run took {time.monotonic() - started:.0f} s")
    print("\n" + report.render(result))
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    print(f"written to {report.write(result, args.results_dir, stamp)}")
    return 0


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
                [
                    sys.executable,
                    "-m",
                    "training",
                    "train",
                    "--model",
                    name,
                    "--profile",
                    "quick",
                    "--models-dir",
                    str(fallback_dir),
                    "--data-dir",
                    data_dir,
                ],
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


def gateway_import_footprint() -> dict:
    """A fresh interpreter importing the gateway and building its app: seconds, peak RSS, TensorFlow?"""
    code = (
        "import json, sys, time\n"
        "start = time.perf_counter()\n"
        "from serving.gateway import create_app\n"
        "create_app({'MODEL_SERVER': '127.0.0.1:9'})\n"
        "seconds = time.perf_counter() - start\n"
        "peak = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0].split()[1]\n"
        "print(json.dumps({'import_seconds': seconds, 'tensorflow_imported': 'tensorflow' in sys.modules,\n"
        "                  'import_rss_mb': int(peak) / 1024}))\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(output.stdout.strip().splitlines()[-1])


def in_process_limit(name: str, models_dir: Path, data_dir: str, seconds: float) -> dict[int, float]:
    logger.info("%s: in-process limit", name)
    output = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.inprocess",
            "--models-dir",
            str(models_dir),
            "--data-dir",
            data_dir,
            "--model",
            name,
            "--seconds",
            str(seconds),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env=stack.model_server_environment(),  # the model server's, so the limit is the same model's
    ).stdout
    rows = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return {row["batch_size"]: row["images_per_second"] for row in rows}


class model_server:  # noqa: N801 - used as a context manager, reads like one
    """The embedded model server on a free port, for the length of a `with` block."""

    def __init__(self, config_file: Path, log_path: Path, *flags: str) -> None:
        self.config_file, self.log_path, self.flags = config_file, log_path, flags

    def __enter__(self) -> model_server:
        port = stack.free_port()
        logger.info("starting the model server %s", " ".join(self.flags))
        self.log = self.log_path.open("w")
        self.process = stack.start_model_server(
            port,
            self.config_file,
            "--file_system_poll_wait_seconds=0",
            *self.flags,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            env=stack.model_server_environment(),  # as `make serve` runs it
        )
        names = stack.model_names_in_config(self.config_file)
        stack.wait_for_models(f"127.0.0.1:{port}", names, self.process, timeout=300)
        self.target, self.pid = f"127.0.0.1:{port}", self.process.pid
        return self

    def __exit__(self, *exc_info: object) -> None:
        stack.stop(self.process)
        self.log.close()


def first_request_latency(target: str, workload: Workload, warmup: str) -> dict:
    """The first Predict a fresh server answers for a model, against the ones after it."""
    requests = workload.predict_requests()
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=30)
        predict = channel.unary_unary(grpc_load.PREDICT)
        timings = []
        for request in requests * 4:
            start = time.perf_counter()
            predict(request, timeout=30)
            timings.append((time.perf_counter() - start) * 1000)
    return {
        "model": workload.model,
        "warmup": warmup,
        "first_ms": timings[0],
        "later_ms": statistics.median(timings[1:]),
        "later_count": len(timings) - 1,
    }


def grpc_load_name(args) -> str:
    if args.h2load:
        return "h2load (1 connection)"
    if args.grpc_load == "h2load":
        return "grpc.aio (h2load not found)"
    return "grpc.aio"


def best_of(rounds: int, run: Callable[[], LoadResult]) -> LoadResult:
    return max((run() for _ in range(max(rounds, 1))), key=lambda result: result.throughput)


def grpc_runs(
    args,
    result: report.Report,
    label: str,
    target: str,
    pid: int,
    workload: Workload,
    concurrencies: list[int] | None = None,
) -> None:
    """Single-image Predict at each of the concurrencies, with the serving process's CPU."""
    for concurrency in concurrencies or args.concurrency:
        closed_loop = (
            partial(grpc_load.run_h2load, args.h2load) if args.h2load else grpc_load.run_closed_loop
        )
        run = partial(
            closed_loop,
            target,
            workload.predict_requests(),
            concurrency,
            args.seconds,
            label=label,
            model=workload.model,
        )
        result.results.append(best_of(args.rounds, partial(with_cpu, [pid], run)))


def http_runs(
    args, targets: list[tuple[str, str, list[int]]], workload: Workload, wrk: str | None
) -> list[list[LoadResult]]:
    """The HTTP loads at each concurrency against every (label, url, pids) target, each target's
    best of `args.rounds`; the targets take turns round by round, so that a machine that slows
    down or speeds up meanwhile weighs on each of them alike. Each measured run follows a
    second of the same load, unmeasured: a server whose caches the other one's run evicted
    starts warm, as the gRPC runs do. One list of results per target."""
    bodies = workload.multipart_bodies()
    results: list[list[LoadResult]] = [[] for _ in targets]
    for concurrency in args.http_concurrency:
        rounds: list[list[LoadResult]] = [[] for _ in targets]
        for round_ in range(max(args.rounds, 1)):
            # Each target goes first in every other round: neither always runs after the other.
            order = list(enumerate(targets))
            for index, (label, url, pids) in order if round_ % 2 == 0 else order[::-1]:
                if wrk:
                    run = partial(http_load.run_wrk, wrk, url, bodies, MULTIPART_CONTENT_TYPE, concurrency)
                else:
                    run = partial(
                        http_load.run_python_closed_loop, url, bodies, MULTIPART_CONTENT_TYPE, concurrency
                    )
                options = {"label": label, "model": workload.model}
                run(WARMUP_SECONDS, **options)
                rounds[index].append(with_cpu(pids, partial(run, args.seconds, **options)))
        for index, measured in enumerate(rounds):
            results[index].append(max(measured, key=lambda result: result.throughput))  # as best_of
    return results


def run_gateway(
    args,
    result: report.Report,
    workloads: dict[str, Workload],
    server: model_server,
    models_dir: Path,
    wrk: str | None,
    logs: Path,
) -> list[LoadResult]:
    """The gateway's runs, and the tutorial app's taking turns with them (unless skipped): its
    results are returned, for the table to list them after the other servers' as before."""
    port = stack.free_port()
    environment = {"LOG_LEVEL": os.environ.get("LOG_LEVEL", "INFO"), "MODELS": ",".join(workloads)}
    if args.gateway_workers:
        environment["GATEWAY_WORKERS"] = args.gateway_workers
    if args.gateway_threads:
        environment["GATEWAY_THREADS"] = args.gateway_threads
    logger.info("starting the gateway %s", environment)
    tutorial_results: list[LoadResult] = []
    with (logs / "gateway.log").open("w") as log:
        gateway = stack.start_gateway(
            port, server.target, models_dir, env=environment, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            base = f"http://127.0.0.1:{port}"
            stack.wait_for_http(f"{base}/readyz", gateway)
            # The first worker up answers /readyz while gunicorn may still be forking the others,
            # whose CPU would then count as other processes'.
            workers = int(environment.get("GATEWAY_WORKERS") or os.environ.get("GATEWAY_WORKERS")
                          or len(os.sched_getaffinity(0)))  # gunicorn.conf.py's default
            deadline = time.monotonic() + 60
            while len(process_tree(gateway.pid)) < 1 + workers and gateway.poll() is None:
                if time.monotonic() > deadline:
                    logger.warning("the gateway has %d of %d workers after 60 s; their CPU counts as others'",
                                   len(process_tree(gateway.pid)) - 1, workers)
                    break
                time.sleep(0.1)
            pids = [server.pid, *process_tree(gateway.pid)]  # the gateway's CPU is counted with the server's
            for name, workload in workloads.items():
                url = f"{base}/v1/models/{name}:predict"
                post_until_ok(url, workload, gateway)
                with contextlib.ExitStack() as apps:
                    targets = [(report.GATEWAY, url, pids)]
                    if "tutorial" not in args.skip:
                        tutorial_url, tutorial_pid = apps.enter_context(tutorial_app(workload, models_dir, logs))
                        targets.append((report.TUTORIAL, tutorial_url, [tutorial_pid]))
                    measured = http_runs(args, targets, workload, wrk)
                result.results.extend(measured[0])
                if len(measured) > 1:
                    tutorial_results.extend(measured[1])
                saturation = result.best(report.GATEWAY, name)
                if saturation:
                    run = partial(
                        http_load.run_python_open_loop,
                        url,
                        workload.multipart_bodies(),
                        MULTIPART_CONTENT_TYPE,
                        saturation.throughput / 2,
                        label=report.GATEWAY,
                        model=name,
                    )
                    run(WARMUP_SECONDS)  # after the tutorial app's last run, as before each closed loop
                    result.results.append(with_cpu(pids, partial(run, args.seconds)))
            result.gateway_footprint["worker_rss_mb"] = worker_rss_mb(gateway.pid)
        finally:
            stack.stop(gateway)
    return tutorial_results


def run_floor(args, result: report.Report, workloads: dict[str, Workload], logs: Path) -> None:
    """The same gRPC load against a Python PredictionService that runs no model (bench/grpc_floor.py)."""
    for name, workload in workloads.items():
        port = stack.free_port()
        with (logs / "floor.log").open("w") as log:
            floor = subprocess.Popen(
                [sys.executable, "-m", "bench.grpc_floor", f"--port={port}", f"--model={name}"],
                cwd=ROOT,
                stdout=subprocess.PIPE,
                stderr=log,
                text=True,
            )
            try:
                if floor.stdout.readline().strip() != "ready":
                    raise RuntimeError(f"the gRPC floor server did not start; see {logs / 'floor.log'}")
                grpc_runs(args, result, report.FLOOR, f"127.0.0.1:{port}", floor.pid, workload)
            finally:
                stack.stop(floor)
                floor.stdout.close()


@contextlib.contextmanager
def tutorial_app(workload: Workload, models_dir: Path, logs: Path) -> Iterator[tuple[str, int]]:
    """The tutorial Flask app serving `workload`'s model, answering: (its predict URL, its pid)."""
    port = stack.free_port()
    version = max(int(p.name) for p in (models_dir / workload.model).iterdir() if p.name.isdigit())
    logger.info("starting the tutorial Flask app for %s", workload.model)
    with (logs / f"tutorial-{workload.model}.log").open("w") as log:
        app = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "bench.tutorial_app",
                "--model-dir",
                str(models_dir / workload.model / str(version)),
                "--port",
                str(port),
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            url = f"http://127.0.0.1:{port}/predict"
            post_until_ok(url, workload, app)
            yield url, app.pid
        finally:
            stack.stop(app)


def run_tutorial(
    args, result: report.Report, workload: Workload, models_dir: Path, wrk: str | None, logs: Path
) -> None:
    """The tutorial app on its own (when the gateway's runs are skipped)."""
    with tutorial_app(workload, models_dir, logs) as (url, pid):
        result.results.extend(http_runs(args, [(report.TUTORIAL, url, [pid])], workload, wrk)[0])


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


def worker_rss_mb(master_pid: int) -> list[float]:
    """Resident memory of each gunicorn worker (the master's children), from /proc."""
    sizes = []
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            fields = dict(line.split(":", 1) for line in status.read_text().splitlines() if ":" in line)
        except OSError:
            continue
        if int(fields.get("PPid", "0").strip()) == master_pid:
            sizes.append(int(fields["VmRSS"].split()[0]) / 1024)
    return sorted(sizes)


if __name__ == "__main__":
    sys.exit(main())
