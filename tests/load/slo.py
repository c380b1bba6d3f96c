"""The service-level gate: when a run ends, its failures and p95 are held against
--slo-max-fail-ratio and --slo-p95-ms, the process exits non-zero when either is missed,
and a short summary is printed after Locust's own tables."""

from __future__ import annotations

import logging

from locust import events
from locust.runners import WorkerRunner

from tests.load import workers

logger = logging.getLogger(__name__)


def missed_objectives(stats_total, p95_limit_ms: float, max_fail_ratio: float) -> list[str]:
    """What the run missed, in words; empty when every objective was met."""
    if stats_total.num_requests == 0:
        return ["no request completed"]
    missed = []
    if stats_total.fail_ratio > max_fail_ratio:
        missed.append(
            f"{stats_total.num_failures} of {stats_total.num_requests} requests failed "
            f"({stats_total.fail_ratio:.2%}; allowed: {max_fail_ratio:.2%})"
        )
    p95 = stats_total.get_response_time_percentile(0.95)
    if p95 > p95_limit_ms:
        missed.append(f"p95 {p95:.0f} ms is above {p95_limit_ms:.0f} ms")
    return missed


def summary(environment) -> str:
    total, options = environment.stats.total, environment.parsed_options
    percentile = total.get_response_time_percentile
    lines = [
        f"{total.num_requests} requests, {total.num_failures} failed ({total.fail_ratio:.2%}), "
        f"{total.total_rps:.1f} requests/s; response time p50 {percentile(0.5):.0f} ms, "
        f"p95 {percentile(0.95):.0f} ms, p99 {percentile(0.99):.0f} ms"
    ]
    for step in getattr(environment.shape_class, "steps", []):
        lines.append(
            f"  step: {step.users:3d} users, {step.requests_per_second:6.1f} requests/s, "
            f"p95 {step.p95_ms:.0f} ms{'  <- saturated' if step.saturated else ''}"
        )
    lines += workers.summary_lines()
    missed = missed_objectives(total, options.slo_p95_ms, options.slo_max_fail_ratio)
    verdict = "MISSED: " + "; ".join(missed) if missed else "met"
    lines.append(
        f"SLO (p95 <= {options.slo_p95_ms:.0f} ms, failures <= {options.slo_max_fail_ratio:.2%}): {verdict}"
    )
    return "\n".join(lines)


@events.init.add_listener
def install_gate(environment, **_kwargs) -> None:
    # Workers see only their own share; the master (or a single process) judges the run.
    if isinstance(environment.runner, WorkerRunner) or environment.parsed_options is None:
        return

    def judge(**_kwargs) -> None:
        if hasattr(environment.shape_class, "finish_step"):
            environment.shape_class.finish_step()
        options = environment.parsed_options
        if missed_objectives(environment.stats.total, options.slo_p95_ms, options.slo_max_fail_ratio):
            environment.process_exit_code = 1
        elif not environment.runner.exceptions:
            # Failures within --slo-max-fail-ratio pass; a crash in the test code itself still does not.
            environment.process_exit_code = 0

    def report(exit_code: int, **_kwargs) -> None:
        print(f"\n--- pixelgate load test ---\n{summary(environment)}\nexit code {exit_code}", flush=True)

    environment.events.quitting.add_listener(judge)
    environment.events.quit.add_listener(report)
