"""gunicorn settings for the gateway; every value can be overridden by an environment variable."""

import gc
import os
import socket

bind = f"{os.environ.get('GATEWAY_HOST', '0.0.0.0')}:{os.environ.get('GATEWAY_PORT', '8000')}"
# Decoding and preprocessing hold the GIL, so one process per core the gateway may use (its CPU
# affinity: a container's or taskset's share, not the host's count). Most of a request's time
# is the wait on the model server, so 16 threads each keep enough requests in flight for the
# model server to batch them, and let up to 16 kept-alive connections per worker keep their
# thread between requests (http_worker.py): 16 cost the workers less CPU per request than 8
# at concurrency 16, the same at 32, and answered as many or more requests per second
# (docs/benchmarks.md).
workers = int(os.environ.get("GATEWAY_WORKERS", len(os.sched_getaffinity(0))))
threads = int(os.environ.get("GATEWAY_THREADS", 16))
# gthread, answering gunicorn's own errors (URI too long, bad headers) as JSON like the app does,
# and refusing new connections as soon as a graceful stop begins.
worker_class = "serving.gateway.http_worker.GatewayThreadWorker"
# Each worker listens on its own SO_REUSEPORT socket and the kernel spreads new connections
# evenly over them. On one shared socket whichever worker wins the accept race keeps the
# connection: under a burst of connections one worker often got all of them (all 32 of wrk's in
# one run of three), its GIL capping the gateway at one core while the other worker idled.
# GATEWAY_REUSE_PORT=false goes back to one socket shared by all workers.
reuse_port = os.environ.get("GATEWAY_REUSE_PORT", "true").strip().lower() not in ("0", "false", "no", "off")
timeout = int(os.environ.get("GATEWAY_WORKER_TIMEOUT", 30))
graceful_timeout = int(os.environ.get("GATEWAY_GRACEFUL_TIMEOUT", 20))
keepalive = 5
accesslog = None  # the app logs one line per request itself
loglevel = os.environ.get("LOG_LEVEL", "info").lower()


def on_starting(server):
    """Refuse a port someone else listens on: SO_REUSEPORT would share it instead of failing.

    Not on a binary upgrade (USR2): the new master shares the port with the old one's workers
    on purpose, and gunicorn tells it so with `master_pid`.
    """
    if not server.cfg.reuse_port or server.master_pid:
        return
    for address in server.cfg.address:
        if not isinstance(address, tuple):  # a unix socket path
            continue
        host, port = address[0], address[1]
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
                probe.listen(1)
            except OSError as error:
                raise SystemExit(f"gateway: cannot listen on {host}:{port}: {error.strerror}") from None


def post_worker_init(worker):
    """Leave the loaded app's objects out of garbage collection from now on.

    Flask, NumPy, Pillow and the protos leave ~50,000 long-lived objects; each full collection
    walked them all under the GIL (20-40 ms, stalling every request of the worker, seen in the
    tail latency). Frozen, a collection looks only at what requests allocate.
    """
    gc.collect()
    gc.freeze()


def child_exit(server, worker):
    """Drop a dead worker's live gauges from the multiprocess metrics (PROMETHEUS_MULTIPROC_DIR)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
