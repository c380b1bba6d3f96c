"""The soak script (bench/soak.py) for a few seconds against the session's gateway: it finds
the saturating rate, holds a fraction of it, and reports errors, latency and RSS over time.
The real run is 10 minutes: `python -m bench.soak`."""

from __future__ import annotations

from urllib.parse import urlsplit

from bench.processes import listening_pid
from bench.soak import run_soak
from bench.soak_report import print_report


def test_a_short_soak_reports_errors_latency_and_memory(gateway_url, model_server):
    pids = {
        "gateway": listening_pid(urlsplit(gateway_url).port),
        "model_server": listening_pid(int(model_server.rsplit(":", 1)[1])),
    }
    report = run_soak(gateway_url, pids, duration=6, probe_seconds=1, interval=2, fraction=0.7)
    print_report(report)
    assert report["saturation_rps"] > 0 and report["requests"] > 0
    assert report["errors"] == 0, report["statuses"]
    assert len(report["intervals"]) >= 3
    assert set(report["rss_trend"]) == {"gateway", "model_server"}
    assert all(trend["end_mb"] > 0 for trend in report["rss_trend"].values())
