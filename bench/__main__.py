"""`python -m bench` (what `make bench` runs): one bounded run that measures, per model, the
in-process limit, the model server over gRPC with and without batching (TF Serving's Predict, and
KServe v2's ModelInfer at c=32 beside it), the gateway end to end and the tutorial Flask app,
then prints the table and writes it to bench-results/.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from datetime import datetime
from pathlib import Path

from bench import grpc_load, http_load, phases, report, servers
from bench.cpu import cpu_description
from bench.stats import LoadResult
from bench.workload import load_workload
from serving import stack

ROOT = servers.ROOT
DEFAULT_DATA_DIR = ROOT.parent / "shared" / "datasets"
BATCHING_PARAMETERS = ROOT / "serving" / "config" / "batching_parameters.txt"
# The small-model configuration: the same batching file, with one TensorFlow thread for the ops
# of every batch (the batch threads queue their runs on it), leaving the other cores to gRPC.
SMALL_MODEL_FLAGS = ["--tensorflow_inter_op_parallelism=1"]


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
        "--tutorial-workers",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="gunicorn workers for the tutorial app (default: one per core this process may use); "
        "TensorFlow's intra- and inter-op threads in each are the cores divided among them",
    )
    parser.add_argument(
        "--tutorial-threads", type=int, default=4, help="gthread threads per tutorial app worker"
    )
    parser.add_argument(
        "--skip",
        nargs="*",
        default=[],
        choices=[
            "inprocess", "server", "batching", "v2", "small", "floor", "gateway", "explain", "tutorial",
            "devserver",
        ],
        help="phases to leave out (server: the model server without batching; v2: KServe v2's gRPC "
        "ModelInfer at c=32 on the batching server, run after its Predict rows; small: with the "
        "small-model batching configuration; explain: the gateway's explain=true latency, one image "
        "at a time; devserver: the tutorial app's reference row on Flask's development server)",
    )
    args = parser.parse_args()
    args.tutorial_layout = servers.TutorialLayout(args.tutorial_workers, args.tutorial_threads)
    return args


def main() -> int:
    args = parse_arguments()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s bench: %(message)s", datefmt="%H:%M:%S")
    started = time.monotonic()
    fallback_models_dir = args.results_dir / "models"
    models_dir = servers.ensure_models(args.models, args.models_dir, fallback_models_dir, args.data_dir)
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
            f"tutorial app: {args.tutorial_layout.describe()}; the goals compare the gateway with it",
        ]
    )
    result.gateway_footprint = phases.gateway_import_footprint()
    if "inprocess" not in args.skip:
        for name in args.models:
            result.in_process[name], result.score_cost[name] = phases.in_process_limit(
                name, models_dir, args.data_dir, args.seconds
            )
    config_file = servers.write_model_config(args.models, models_dir, args.results_dir / "models.config")
    if "server" not in args.skip:
        with servers.model_server(
            config_file,
            logs / "server.log",
            "--enable_model_warmup=false",
            stack.GRPC_THREADS_FLAG,  # as many Predicts in flight as the batching server takes
            *args.server_flags,
        ) as server:
            for workload in workloads.values():
                first = phases.first_request_latency(server.target, workload, warmup="off")
                result.first_requests.append(first)
                phases.grpc_runs(args, result, report.SERVER, server.target, server.pid, workload)
    batching_flags = stack.batching_flags(args.batching_parameters)
    tutorial_results: list[LoadResult] = []  # measured in turns with the gateway's runs
    with servers.model_server(
        config_file, logs / "server-batching.log", *batching_flags, *args.server_flags, metrics=True
    ) as server:
        for workload in workloads.values():
            first = phases.first_request_latency(server.target, workload, warmup="on")
            result.first_requests.append(first)
            if "batching" in args.skip:
                continue
            phases.grpc_runs(args, result, report.SERVER_BATCHING, server.target, server.pid, workload)
            if "v2" not in args.skip:  # right after Predict's c=32 run, on the same server and flags
                phases.grpc_runs(
                    args, result, report.SERVER_V2, server.target, server.pid, workload, [32],
                    method=grpc_load.MODEL_INFER,
                )
            phases.grpc_half_saturation(args, result, server.target, server.pid, workload)
        if "gateway" not in args.skip:
            tutorial_results = phases.run_gateway(args, result, workloads, server, models_dir, wrk, logs)
    if "small" not in args.skip:
        with servers.model_server(
            config_file,
            logs / "server-small.log",
            *batching_flags,
            *SMALL_MODEL_FLAGS,
            *args.server_flags,
        ) as server:
            for workload in workloads.values():
                phases.grpc_runs(args, result, report.SERVER_SMALL, server.target, server.pid, workload, [32])
    if "floor" not in args.skip:
        phases.run_floor(args, result, workloads, logs)
    if "tutorial" not in args.skip and "gateway" not in args.skip:
        result.results.extend(tutorial_results)
    elif "tutorial" not in args.skip:
        for workload in workloads.values():
            phases.run_tutorial(args, result, workload, models_dir, wrk, logs)
    result.notes.append(f"the whole run took {time.monotonic() - started:.0f} s")
    print("\n" + report.render(result))
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    print(f"written to {report.write(result, args.results_dir, stamp)}")
    return 0


def grpc_load_name(args) -> str:
    if args.h2load:
        return "h2load (1 connection)"
    if args.grpc_load == "h2load":
        return "grpc.aio (h2load not found)"
    return "grpc.aio"


if __name__ == "__main__":
    sys.exit(main())
