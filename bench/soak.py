"""Soak test: find the gateway's saturating rate, then hold ~70 % of it for a long time and
report errors, latency and memory (RSS of the gateway's processes and the model server) over time.

    python -m bench.soak                         # starts its own stack, 10 minutes at 70 %
    python -m bench.soak --url http://127.0.0.1:8000 --duration 600 --fraction 0.7

A report (JSON) and the servers' logs go to --out; the table printed at the end has one row
per interval. Memory is "flat" when the RSS slope over the run's second half is small next to
the total.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict
from pathlib import Path
from urllib.parse import urlsplit

from bench.processes import listening_pid
from bench.soak_load import Client, digit_images, find_saturation, open_loop
from bench.soak_report import percentile, print_report, rss_trend, summarize

logger = logging.getLogger("bench.soak")


def run_soak(
    url: str,
    pids: dict[str, int],
    *,
    model: str = "mnist",
    duration: float = 600,
    fraction: float = 0.7,
    probe_seconds: float = 10,
    interval: float = 60,
    headers: dict[str, str] | None = None,
) -> dict:
    client = Client(url, model, digit_images(), headers or {})
    try:
        saturation, probe = find_saturation(client, probe_seconds)
        rate = max(saturation * fraction, 1.0)
        logger.info("saturation %.1f req/s; soaking at %.1f req/s for %.0f s", saturation, rate, duration)
        started = time.monotonic()
        outcomes, memory, late = open_loop(client, rate, duration, pids, interval)
    finally:
        client.close()
    rows = summarize(outcomes, memory, started, interval)
    statuses = Counter(o.status for o in outcomes)
    latencies = sorted(o.seconds * 1000 for o in outcomes if o.status == 200) or [0.0]
    return {
        "url": url,
        "model": model,
        "saturation_rps": round(saturation, 1),
        "probe_rps_by_concurrency": {str(k): round(v, 1) for k, v in probe.items()},
        "target_rps": round(rate, 1),
        "duration_s": duration,
        "achieved_rps": round(len(outcomes) / max(duration, 1e-9), 1),
        "requests": len(outcomes),
        "errors": sum(n for status, n in statuses.items() if status != 200),
        "statuses": {str(status): n for status, n in sorted(statuses.items())},
        "late_sends": late,
        "latency_ms": {
            "p50": round(percentile(latencies, 50), 1),
            "p95": round(percentile(latencies, 95), 1),
            "p99": round(percentile(latencies, 99), 1),
            "max": round(latencies[-1], 1),
        },
        "rss_trend": rss_trend(memory),
        "intervals": [asdict(row) for row in rows],
    }


def _start_stack(model_config_file: Path, models_dir: Path, log_dir: Path):
    """A model server and a gateway on free ports; their logs (a line per request) go to files."""
    from serving import stack

    grpc_port, http_port = stack.free_port(), stack.free_port()
    names = stack.model_names_in_config(model_config_file)
    with open(log_dir / "soak-model-server.log", "wb") as log:
        model_server = stack.start_model_server(
            grpc_port, model_config_file.resolve(), stdout=log, stderr=subprocess.STDOUT
        )
    stack.wait_for_models(f"127.0.0.1:{grpc_port}", names, model_server)
    with open(log_dir / "soak-gateway.log", "wb") as log:
        gateway = stack.start_gateway(
            http_port, f"127.0.0.1:{grpc_port}", models_dir.resolve(), stdout=log, stderr=subprocess.STDOUT
        )
    stack.wait_for_http(f"http://127.0.0.1:{http_port}/readyz", gateway)
    return model_server, gateway, http_port


def main(arguments: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", help="a running gateway; default: start a model server and a gateway here")
    parser.add_argument(
        "--gateway-pid", type=int, help="gunicorn master of --url (default: found by its port)"
    )
    parser.add_argument("--model-server-pid", type=int, help="model server of --url, for its RSS")
    parser.add_argument("--model", default="mnist")
    parser.add_argument("--duration", type=float, default=600, help="seconds at the soak rate")
    parser.add_argument("--fraction", type=float, default=0.7, help="of the saturating rate")
    parser.add_argument("--probe-seconds", type=float, default=10, help="per concurrency level")
    parser.add_argument("--interval", type=float, default=60, help="seconds per report row")
    parser.add_argument("--model-config-file", type=Path, default=Path("serving/config/models.config"))
    parser.add_argument("--models-dir", type=Path, default=Path("models"))
    parser.add_argument("--out", type=Path, default=Path("bench-results"))
    parser.add_argument("--token", help="bearer token, if the gateway wants one")
    args = parser.parse_args(arguments)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")

    processes: tuple[subprocess.Popen[str], ...] = ()
    if args.url:
        url = args.url
        pids = {"gateway": args.gateway_pid or listening_pid(urlsplit(url).port or 80)}
        if args.model_server_pid:
            pids["model_server"] = args.model_server_pid
    else:
        args.out.mkdir(parents=True, exist_ok=True)
        model_server, gateway, port = _start_stack(args.model_config_file, args.models_dir, args.out)
        processes, url = (gateway, model_server), f"http://127.0.0.1:{port}"
        pids = {"gateway": gateway.pid, "model_server": model_server.pid}
    try:
        headers = {"Authorization": f"Bearer {args.token}"} if args.token else {}
        report = run_soak(
            url,
            pids,
            model=args.model,
            duration=args.duration,
            fraction=args.fraction,
            probe_seconds=args.probe_seconds,
            interval=args.interval,
            headers=headers,
        )
    finally:
        if processes:
            from serving import stack

            stack.stop(*processes)
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"soak-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.write_text(json.dumps(report, indent=1))
    print_report(report)
    print(f"report: {path}")
    return 0 if report["errors"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
