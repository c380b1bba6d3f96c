"""Load generators for TF Serving's Predict (or the Open Inference Protocol's ModelInfer, by
`method`), each over one HTTP/2 connection.

- `run_h2load`: nghttp2's h2load (C), N calls always in flight with one pre-serialized
  request, gRPC-framed. It leaves the shared cores to the model server (docs/benchmarks.md
  has the figures), so the server, not the client, is what gets measured. h2load does not read gRPC's
  status trailers, so each run checks the answers by their size (a failed call has no
  message), after one call made with grpcio to learn that size.
- `run_closed_loop` / `run_open_loop`: grpcio's asyncio client with pre-serialized requests
  sent as raw bytes, N calls in flight (closed loop) or a fixed arrival rate (open loop,
  latency counted from each call's scheduled start); the closed loop when h2load is missing.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

import grpc
import numpy as np

from bench.pacing import paced
from bench.stats import LoadResult, from_latencies

PREDICT = "/tensorflow.serving.PredictionService/Predict"
MODEL_INFER = "/inference.GRPCInferenceService/ModelInfer"  # KServe v2, on the same port
MAX_IN_FLIGHT_OPEN_LOOP = 512
logger = logging.getLogger(__name__)


def find_h2load(install: bool = True) -> str | None:
    """h2load's path; installs Debian's nghttp2-client when missing and allowed (root with apt-get)."""
    path = shutil.which("h2load")
    if path or not install or not shutil.which("apt-get") or os.geteuid() != 0:
        return path
    logger.info("installing nghttp2-client with apt-get (h2load, the gRPC load generator)")
    subprocess.run(
        ["apt-get", "install", "-y", "-q", "nghttp2-client"], check=False, capture_output=True, timeout=300
    )
    return shutil.which("h2load")


def run_h2load(
    h2load: str,
    target: str,
    requests: list[bytes],
    concurrency: int,
    seconds: float,
    *,
    label: str,
    model: str,
    warmup: float = 1.0,
    answer_size: int | None = None,
    method: str = PREDICT,
) -> LoadResult:
    """`concurrency` calls of `method` always in flight for `seconds` (after `warmup`), with h2load.

    `answer_size`: the serialized answer's size; by default one call asks for it.
    """
    request = requests[0]  # one request: h2load sends one body; every image costs a model the same
    if answer_size is None:
        with grpc.insecure_channel(target) as channel:
            answer_size = len(channel.unary_unary(method)(request, timeout=60))
    with tempfile.TemporaryDirectory(prefix="pixelgate-h2load-") as directory:
        body, log = Path(directory) / "request", Path(directory) / "requests.log"
        body.write_bytes(_grpc_frame(request))
        command = [
            h2load,
            "--threads=1",
            "--clients=1",  # one connection, as one gRPC channel
            f"--max-concurrent-streams={concurrency}",
            "--header=content-type: application/grpc",
            "--header=te: trailers",
            f"--data={body}",
        ]
        url = f"http://{target}{method}"
        sent = 0
        if warmup > 0:
            warm = _run(command + [f"--duration={round(warmup * 1000)}ms", url], warmup)
            sent += warm["requests"]
        summary = _run(command + [f"--duration={round(seconds * 1000)}ms", f"--log-file={log}", url], seconds)
        latencies_us = np.array([int(line.split()[2]) for line in log.read_text().splitlines()])
    sent += summary["requests"]
    # A failed call answers with trailers only, no message: count the messages by their size.
    answered = summary["data_bytes"] // (answer_size + 5)
    errors: Counter[str] = Counter()
    # Calls in flight when the window closes may have sent their message but not yet ended.
    if summary["succeeded"] - answered > concurrency:
        errors["NO_MESSAGE"] = summary["succeeded"] - answered
    errors.update({kind: summary[kind] for kind in ("failed", "errored", "timeout") if summary[kind]})
    result = from_latencies(
        label, model, list(latencies_us / 1e6), seconds, errors, concurrency=concurrency, tool="h2load"
    )
    result.requests = min(summary["succeeded"], answered)
    result.sent = sent
    return result


def _grpc_frame(message: bytes) -> bytes:
    """gRPC's length-prefixed message: no compression flag, then the length, big-endian."""
    return b"\0" + struct.pack(">I", len(message)) + message


_H2LOAD_REQUESTS = re.compile(
    r"requests: (?P<requests>\d+) total, \d+ started, \d+ done, (?P<succeeded>\d+) succeeded, "
    r"(?P<failed>\d+) failed, (?P<errored>\d+) errored, (?P<timeout>\d+) timeout"
)
_H2LOAD_DATA = re.compile(r"\((?P<data_bytes>\d+)\) data")


def _run(command: list[str], seconds: float) -> dict[str, int]:
    output = subprocess.run(command, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
    counts, data = _H2LOAD_REQUESTS.search(output), _H2LOAD_DATA.search(output)
    if counts is None or data is None:
        raise RuntimeError(f"unexpected h2load output:\n{output}")
    return {**{key: int(value) for key, value in counts.groupdict().items()}, **{"data_bytes": int(data[1])}}


def run_closed_loop(
    target: str, requests: list[bytes], concurrency: int, seconds: float, *, label: str, model: str,
    warmup: float = 1.0, method: str = PREDICT,
) -> LoadResult:
    return asyncio.run(_closed_loop(target, requests, concurrency, seconds, warmup, label, model, method))


def run_open_loop(
    target: str, requests: list[bytes], rate: float, seconds: float, *, label: str, model: str
) -> LoadResult:
    return asyncio.run(_open_loop(target, requests, rate, seconds, label, model))


async def _closed_loop(target, requests, concurrency, seconds, warmup, label, model, method) -> LoadResult:
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    sent = 0
    async with grpc.aio.insecure_channel(target) as channel:
        predict = channel.unary_unary(method)  # no (de)serializers: bytes in, bytes out
        cycle = itertools.cycle(requests)
        start = time.perf_counter()
        measure_from, end = start + warmup, start + warmup + seconds

        async def worker() -> None:
            nonlocal sent
            while (started := time.perf_counter()) < end:
                sent += 1
                try:
                    await predict(next(cycle), timeout=30)
                except grpc.aio.AioRpcError as error:
                    if started >= measure_from:
                        errors[error.code().name] += 1
                    continue
                if started >= measure_from:
                    latencies.append(time.perf_counter() - started)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    result = from_latencies(
        label, model, latencies, seconds, errors, concurrency=concurrency, tool="grpc.aio"
    )
    result.sent = sent
    return result


async def _open_loop(target, requests, rate, seconds, label, model) -> LoadResult:
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    async with grpc.aio.insecure_channel(target) as channel:
        predict = channel.unary_unary(PREDICT)
        in_flight: set[asyncio.Task] = set()

        async def call(request: bytes, scheduled: float) -> None:
            try:
                await predict(request, timeout=30)
                latencies.append(time.perf_counter() - scheduled)
            except grpc.aio.AioRpcError as error:
                errors[error.code().name] += 1

        async for request, scheduled in paced(requests, rate, seconds):
            if len(in_flight) >= MAX_IN_FLIGHT_OPEN_LOOP:
                errors["GENERATOR_OVERLOADED"] += 1
                continue
            task = asyncio.create_task(call(request, scheduled))
            in_flight.add(task)
            task.add_done_callback(in_flight.discard)
        await asyncio.gather(*in_flight)
    return from_latencies(label, model, latencies, seconds, errors, rate=rate, tool="grpc.aio")
