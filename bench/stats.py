"""One load run's outcome: throughput and latency percentiles, from raw latencies or a tool's summary."""

from __future__ import annotations

from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np


@dataclass
class LoadResult:
    target: str  # what was measured, e.g. "gateway" or "model server (batching)"
    model: str
    concurrency: int | None  # closed loop: requests in flight; None for a fixed arrival rate
    rate: float | None  # open loop: requests per second offered
    requests: int  # answered OK within the measured window
    seconds: float
    images_per_request: int = 1
    p50_ms: float = float("nan")
    p95_ms: float = float("nan")
    p99_ms: float = float("nan")
    errors: dict[str, int] = field(default_factory=dict)
    tool: str = ""
    server_cpu_ms: float = float("nan")  # CPU of the serving processes per request (bench.cpu)
    load_cpu_ms: float = float("nan")  # CPU of the load generator per request, on the same cores
    sent: int = 0  # every request sent, warm-up included: what the serving CPU time was spent on
    # Share of the machine's cores that other processes (or the hypervisor, as steal) used during
    # the run: what the measured processes and the load generator could not use (bench.cpu).
    other_cpu_share: float = float("nan")
    # The batches the model server's batching ran during the run (gateway rows; bench.phases.with_batches):
    # how many of each size bucket (by its upper bound, padding included), and images per batch.
    batch_counts: dict[int, int] = field(default_factory=dict)
    mean_batch_size: float = float("nan")

    @property
    def throughput(self) -> float:
        """Answered requests per second (images per second for single-image requests)."""
        return self.requests / self.seconds if self.seconds else 0.0

    def as_dict(self) -> dict:
        return {**asdict(self), "throughput": round(self.throughput, 1)}


def from_latencies(
    target: str,
    model: str,
    latencies_seconds: list[float],
    seconds: float,
    errors: Counter[str],
    *,
    concurrency: int | None = None,
    rate: float | None = None,
    tool: str,
) -> LoadResult:
    result = LoadResult(
        target, model, concurrency, rate, len(latencies_seconds), seconds, errors=dict(errors), tool=tool
    )
    if latencies_seconds:
        p50, p95, p99 = np.percentile(np.asarray(latencies_seconds) * 1000, [50, 95, 99])
        result.p50_ms, result.p95_ms, result.p99_ms = float(p50), float(p95), float(p99)
    return result
