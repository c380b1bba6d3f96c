"""The soak's report: one row per interval (requests, errors, latency percentiles, RSS), the
RSS trend over the run's second half, and the table printed at the end.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import numpy as np

from bench.soak_load import Outcome


@dataclass
class Interval:
    minute: float
    requests: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    rss_mb: dict[str, float] = field(default_factory=dict)


def summarize(
    outcomes: list[Outcome], memory: list[tuple[float, dict[str, float]]], started: float, interval: float
) -> list[Interval]:
    rows = []
    end = max((o.started - started for o in outcomes), default=0.0)
    for index in range(int(end // interval) + 1):
        low, high = index * interval, (index + 1) * interval
        window = [o for o in outcomes if low <= o.started - started < high]
        latencies = sorted(o.seconds * 1000 for o in window if o.status == 200) or [0.0]
        samples = [sample for at, sample in memory if low <= at < high] or [memory[-1][1]] if memory else [{}]
        rows.append(
            Interval(
                minute=round(high / 60, 2),
                requests=len(window),
                errors=sum(o.status != 200 for o in window),
                p50_ms=round(percentile(latencies, 50), 1),
                p95_ms=round(percentile(latencies, 95), 1),
                p99_ms=round(percentile(latencies, 99), 1),
                rss_mb={name: round(max(s.get(name, 0) for s in samples), 1) for name in samples[0]},
            )
        )
    return rows


def percentile(sorted_values: list[float], percent: float) -> float:
    return float(np.percentile(sorted_values, percent))


def rss_trend(memory: list[tuple[float, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per process: RSS at the start and end of the second half, and the slope over it (MB/min)."""
    trend = {}
    second_half = memory[len(memory) // 2 :]
    for name in memory[0][1] if memory else {}:
        times = [at / 60 for at, _ in second_half]
        values = [sample[name] for _, sample in second_half]
        slope = statistics.linear_regression(times, values).slope if len(set(times)) > 1 else 0.0
        trend[name] = {
            "start_mb": round(memory[0][1][name], 1),
            "half_mb": round(values[0], 1),
            "end_mb": round(values[-1], 1),
            "slope_mb_per_min": round(slope, 3),
        }
    return trend


def print_report(report: dict) -> None:
    print(
        f"\nsoak: {report['requests']} requests at {report['achieved_rps']} req/s "
        f"(target {report['target_rps']} = 70 % of {report['saturation_rps']} saturating), "
        f"errors {report['errors']} {report['statuses']}, late sends {report['late_sends']}"
    )
    print(f"latency ms: {report['latency_ms']}")
    names = list(report["rss_trend"])
    print(
        f"{'minute':>7} {'requests':>9} {'errors':>7} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} "
        + " ".join(f"{name + ' MB':>18}" for name in names)
    )
    for row in report["intervals"]:
        print(
            f"{row['minute']:>7} {row['requests']:>9} {row['errors']:>7} "
            f"{row['p50_ms']:>8} {row['p95_ms']:>8} "
            f"{row['p99_ms']:>8} " + " ".join(f"{row['rss_mb'].get(name, 0):>18}" for name in names)
        )
    for name, trend in report["rss_trend"].items():
        print(f"RSS {name}: {trend}")
