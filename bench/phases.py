"""The measured phases of `python -m bench`: each puts a load on one kind of server and adds
its results to the report. `args` is the command line's namespace (bench/__main__.py).
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
from collections.abc import Callable
from functools import partial
from pathlib import Path

import grpc

from bench import grpc_load, http_load, report, servers
from bench.cpu import with_cpu
from bench.processes import process_tree, worker_rss_mb
from bench.stats import LoadResult
from bench.workload import MULTIPART_CONTENT_TYPE, Workload
from serving import stack

logger = logging.getLogger("bench")
# The unmeasured load before each measured HTTP run (h2load's runs have one of their own).
WARMUP_SECONDS = 1.0


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
        [sys.executable, "-c", code], cwd=servers.ROOT, capture_output=True, text=True, check=True
    )
    return json.loads(output.stdout.strip().splitlines()[-1])


def in_process_limit(
    name: str, models_dir: Path, data_dir: str, seconds: float
) -> tuple[dict[int, float], list[dict]]:
    """Images/s per batch size, and the out-of-distribution score's cost rows (bench/score_cost.py):
    each in a process of its own, which the score's cost needs (its thread pools pinned to one thread)."""
    logger.info("%s: in-process limit", name)
    rows = []
    for module in ("bench.inprocess", "bench.score_cost"):
        output = subprocess.run(
            [sys.executable, "-m", module, "--models-dir", str(models_dir), "--data-dir", data_dir,
             "--model", name, "--seconds", str(seconds)],
            cwd=servers.ROOT,
            capture_output=True,
            text=True,
            check=True,
            env=stack.model_server_environment(),  # the model server's, so the limit is the same model's
        ).stdout
        rows += [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    limits = {row["batch_size"]: row["images_per_second"] for row in rows if "images_per_second" in row}
    return limits, [row["score_cost"] for row in rows if "score_cost" in row]


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
    method: str = grpc_load.PREDICT,
) -> None:
    """Single-image Predict (or v2 ModelInfer, by `method`) at each of the concurrencies, with the
    serving process's CPU."""
    requests = (
        workload.model_infer_requests() if method == grpc_load.MODEL_INFER else workload.predict_requests()
    )
    for concurrency in concurrencies or args.concurrency:
        closed_loop = (
            partial(grpc_load.run_h2load, args.h2load) if args.h2load else grpc_load.run_closed_loop
        )
        run = partial(
            closed_loop, target, requests, concurrency, args.seconds,
            label=label, model=workload.model, method=method,
        )
        result.results.append(best_of(args.rounds, partial(with_cpu, [pid], run)))


def grpc_half_saturation(args, result: report.Report, target: str, pid: int, workload: Workload) -> None:
    """A fixed arrival rate of half the best closed-loop throughput: latency below saturation."""
    saturation = result.best(report.SERVER_BATCHING, workload.model)
    if saturation:
        run = partial(
            grpc_load.run_open_loop, target, workload.predict_requests(), saturation.throughput / 2,
            args.seconds, label=report.SERVER_BATCHING, model=workload.model,
        )
        result.results.append(with_cpu([pid], run))


def with_batches(processed_batches: Callable[[], servers.Batches] | None,
                 run: Callable[[], LoadResult]) -> LoadResult:
    """Run a load; record the batches the model server ran meanwhile (read outside the timed run)."""
    if processed_batches is None:
        return run()
    before = processed_batches()
    result = run()
    counts, images = processed_batches().since(before)
    if counts and images > 0:
        result.batch_counts, result.mean_batch_size = counts, images / sum(counts.values())
    return result


def http_runs(
    args, targets: list[tuple[str, str, list[int]]], workload: Workload, wrk: str | None,
    batches: dict[str, Callable[[], servers.Batches]] | None = None,
) -> list[list[LoadResult]]:
    """The HTTP loads at each concurrency against every (label, url, pids) target, each target's
    best of `args.rounds`; the targets take turns round by round, so that a machine that slows
    down or speeds up meanwhile weighs on each of them alike. Each measured run follows a
    second of the same load, unmeasured: a server whose caches the other one's run evicted
    starts warm, as the gRPC runs do. One list of results per target. `batches`: per label, what the
    model server's batching has run so far, to record each run's batches (`with_batches`)."""
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
                timed = partial(with_cpu, pids, partial(run, args.seconds, **options))
                rounds[index].append(with_batches((batches or {}).get(label), timed))
        for index, measured in enumerate(rounds):
            results[index].append(max(measured, key=lambda result: result.throughput))  # as best_of
    return results


def run_gateway(
    args,
    result: report.Report,
    workloads: dict[str, Workload],
    server: servers.model_server,
    models_dir: Path,
    wrk: str | None,
    logs: Path,
) -> list[LoadResult]:
    """The gateway's runs, and the tutorial app's taking turns with them (unless skipped): its
    results are returned, for the table to list them after the other servers' as before."""
    environment = {"LOG_LEVEL": os.environ.get("LOG_LEVEL", "INFO"), "MODELS": ",".join(workloads)}
    if args.gateway_workers:
        environment["GATEWAY_WORKERS"] = args.gateway_workers
    if args.gateway_threads:
        environment["GATEWAY_THREADS"] = args.gateway_threads
    tutorial_results: list[LoadResult] = []
    with servers.gateway(server.target, models_dir, environment, logs / "gateway.log") as (base, gateway):
        pids = [server.pid, *process_tree(gateway.pid)]  # the gateway's CPU is counted with the server's
        for name, workload in workloads.items():
            url = f"{base}/v1/models/{name}:predict"
            servers.post_until_ok(url, workload, gateway)
            with contextlib.ExitStack() as apps:
                targets = [(report.GATEWAY, url, pids)]
                if "tutorial" not in args.skip:
                    tutorial_url, tutorial_pids = apps.enter_context(
                        servers.tutorial_app(workload, models_dir, logs, args.tutorial_layout)
                    )
                    targets.append((report.TUTORIAL, tutorial_url, tutorial_pids))
                # The model server's batches during the gateway's runs: the score's cost per image at
                # the batch it ran (bench/report.py).
                counters = {report.GATEWAY: server.processed_batches} if server.metrics_url else None
                measured = http_runs(args, targets, workload, wrk, counters)
            result.results.extend(measured[0])
            if len(measured) > 1:
                tutorial_results.extend(measured[1])
            saturation = result.best(report.GATEWAY, name)
            if saturation:
                run = partial(
                    http_load.run_python_open_loop, url, workload.multipart_bodies(), MULTIPART_CONTENT_TYPE,
                    saturation.throughput / 2, label=report.GATEWAY, model=name,
                )
                run(WARMUP_SECONDS)  # after the tutorial app's last run, as before each closed loop
                result.results.append(with_cpu(pids, partial(run, args.seconds)))
            if "explain" not in args.skip:
                result.results.append(explain_latency(args, url, workload, pids))
            if "devserver" not in args.skip:
                tutorial_results.extend(run_development_server(args, workload, models_dir, wrk, logs))
        result.gateway_footprint["worker_rss_mb"] = worker_rss_mb(gateway.pid)
    return tutorial_results


def run_floor(args, result: report.Report, workloads: dict[str, Workload], logs: Path) -> None:
    """The same gRPC load against a Python PredictionService that runs no model (bench/grpc_floor.py)."""
    for name, workload in workloads.items():
        with servers.grpc_floor(name, logs) as (target, pid):
            grpc_runs(args, result, report.FLOOR, target, pid, workload)


def run_tutorial(
    args, result: report.Report, workload: Workload, models_dir: Path, wrk: str | None, logs: Path
) -> None:
    """The tutorial app on its own (when the gateway's runs are skipped)."""
    with servers.tutorial_app(workload, models_dir, logs, args.tutorial_layout) as (url, pids):
        result.results.extend(http_runs(args, [(report.TUTORIAL, url, pids)], workload, wrk)[0])
    if "devserver" not in args.skip:
        result.results.extend(run_development_server(args, workload, models_dir, wrk, logs))


def run_development_server(
    args, workload: Workload, models_dir: Path, wrk: str | None, logs: Path
) -> list[LoadResult]:
    """The same app on Flask's development server, as most guides run it: a reference row at the
    highest HTTP concurrency only (the goals are judged against the app on gunicorn)."""
    highest = argparse.Namespace(**{**vars(args), "http_concurrency": [max(args.http_concurrency)]})
    with servers.tutorial_app(workload, models_dir, logs) as (url, pids):
        return http_runs(highest, [(report.TUTORIAL_DEV, url, pids)], workload, wrk)[0]


def explain_latency(args, url: str, workload: Workload, pids: list[int]) -> LoadResult:
    """One image at a time with explain=true: an explanation's latency on an otherwise idle gateway."""
    run = partial(
        http_load.run_python_closed_loop, f"{url}?explain=true", workload.multipart_bodies(),
        MULTIPART_CONTENT_TYPE, 1, label=report.EXPLAIN, model=workload.model,
    )
    run(WARMUP_SECONDS)
    return with_cpu(pids, partial(run, args.seconds))
