"""Locust's distributed mode (`make loadtest WORKERS=N`: a master and N worker processes): the
master counts each worker's requests from the reports the workers send it, so that a run shows
that every worker took its share and that the master's totals, which the SLO gate judges, are
their sum. The counts go into the summary and, with --csv, into <prefix>_workers.csv."""

from __future__ import annotations

import csv
from dataclasses import dataclass

from locust import events
from locust.runners import MasterRunner


@dataclass
class WorkerCount:
    requests: int = 0
    failures: int = 0


# Worker id -> its requests so far, on the master; one run per process.
COUNTS: dict[str, WorkerCount] = {}


@events.init.add_listener
def count_per_worker(environment, **_kwargs) -> None:
    if not isinstance(environment.runner, MasterRunner):
        return

    def add(client_id: str, data: dict) -> None:
        # Each report holds what the worker did since its last one (it clears its stats as it sends).
        total = data.get("stats_total") or {}
        count = COUNTS.setdefault(client_id, WorkerCount())
        count.requests += total.get("num_requests", 0)
        count.failures += total.get("num_failures", 0)

    def write_csv(**_kwargs) -> None:
        prefix = environment.parsed_options and environment.parsed_options.csv_prefix
        if prefix:
            with open(f"{prefix}_workers.csv", "w", newline="") as file:
                writer = csv.writer(file)
                writer.writerow(["Worker", "Request Count", "Failure Count"])
                for client_id, count in sorted(COUNTS.items()):
                    writer.writerow([client_id, count.requests, count.failures])

    environment.events.worker_report.add_listener(add)
    environment.events.quit.add_listener(write_csv)


def summary_lines() -> list[str]:
    """For the master's summary; nothing in a single-process run."""
    if not COUNTS:
        return []
    requests = [count.requests for count in COUNTS.values()]
    return [f"{len(COUNTS)} workers sent {' + '.join(map(str, requests))} = {sum(requests)} requests"]
