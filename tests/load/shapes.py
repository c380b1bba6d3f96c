"""The load shape, picked with --load-shape: `constant` holds --users for --run-time;
`step` adds --step-users every --step-seconds up to --users, logging each step's
throughput and p95 so that the step where throughput stops growing (saturation) shows."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from locust import LoadTestShape
from locust.runners import MasterRunner
from locust.stats import calculate_response_time_percentile, diff_response_time_dicts

logger = logging.getLogger(__name__)
SATURATION_GAIN = 0.10  # a step whose throughput grew less than this is past saturation
# Distributed runs: how long the master waits for its workers' first requests before its clock runs.
WORKER_STARTUP_SECONDS = 120


@dataclass(frozen=True)
class Step:
    users: int
    requests_per_second: float
    p95_ms: float
    saturated: bool


class PixelgateLoadShape(LoadTestShape):
    # --users, --spawn-rate and --run-time keep their meaning (the maximum, in step mode).
    use_common_options = True

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[Step] = []
        self._step = -1  # index of the current step
        self._step_started: tuple[float, dict[int, int]] = (0.0, {})  # run time and response times then
        self._workers_started = False

    def tick(self) -> tuple[int, float] | None:
        options = self.runner.environment.parsed_options
        users, spawn_rate = options.num_users or 1, options.spawn_rate or 1
        if isinstance(self.runner, MasterRunner) and not self._workers_started:
            # Workers read their test images and pick the known-good ones once they have their users;
            # the run time counts from the first requests they report, not through that.
            if not self.runner.stats.total.num_requests and self.get_run_time() < WORKER_STARTUP_SECONDS:
                return self._users(0) if options.load_shape == "step" else users, spawn_rate
            self._workers_started = True
            self.reset_time()
        elapsed = self.get_run_time()
        # Headless Locust waits for the shape to end before it would apply --run-time itself.
        if options.run_time and elapsed >= options.run_time:
            return None
        if options.load_shape == "constant":
            return users, spawn_rate
        step = math.floor(elapsed / max(1.0, options.step_seconds))
        if step != self._step:
            self.finish_step()
            self._step = step
        return self._users(step), spawn_rate

    def finish_step(self) -> None:
        """Record the step that is ending (if any): its users, throughput and p95."""
        if self._step < 0:
            return
        elapsed, total = self.get_run_time(), self.runner.environment.stats.total
        started_at, times_before = self._step_started
        self._step_started = (elapsed, dict(total.response_times))
        # This step's own response times: the histogram now, less the one at its start.
        times = diff_response_time_dicts(total.response_times, times_before)
        count = sum(times.values())
        users = self._users(self._step)
        rate = count / max(elapsed - started_at, 1e-9)
        p95 = calculate_response_time_percentile(times, count, 0.95) if count else 0.0
        previous = self.steps[-1] if self.steps else None
        saturated = bool(
            previous
            and users > previous.users
            and rate < previous.requests_per_second * (1 + SATURATION_GAIN)
        )
        self.steps.append(Step(users, rate, p95, saturated))
        logger.info(
            "step %d: %d users, %.1f requests/s, p95 %.0f ms%s",
            len(self.steps),
            users,
            rate,
            self.steps[-1].p95_ms,
            " (throughput stopped growing: saturated)" if saturated else "",
        )

    def _users(self, step: int) -> int:
        options = self.runner.environment.parsed_options
        return min(options.num_users or 1, max(1, options.step_users) * (step + 1))
