"""A cheap gRPC load generator for TF Serving's Predict: pre-serialized requests sent as raw
bytes over one channel from asyncio, either N calls always in flight (closed loop) or a fixed
arrival rate (open loop, latency counted from each call's scheduled start).
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections import Counter

import grpc

from bench.pacing import paced
from bench.stats import LoadResult, from_latencies

PREDICT = "/tensorflow.serving.PredictionService/Predict"
MAX_IN_FLIGHT_OPEN_LOOP = 512


def run_closed_loop(
    target: str,
    requests: list[bytes],
    concurrency: int,
    seconds: float,
    *,
    label: str,
    model: str,
    warmup: float = 1.0,
) -> LoadResult:
    return asyncio.run(_closed_loop(target, requests, concurrency, seconds, warmup, label, model))


def run_open_loop(
    target: str, requests: list[bytes], rate: float, seconds: float, *, label: str, model: str
) -> LoadResult:
    return asyncio.run(_open_loop(target, requests, rate, seconds, label, model))


async def _closed_loop(target, requests, concurrency, seconds, warmup, label, model) -> LoadResult:
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    sent = 0
    async with grpc.aio.insecure_channel(target) as channel:
        predict = channel.unary_unary(PREDICT)  # no (de)serializers: bytes in, bytes out
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
