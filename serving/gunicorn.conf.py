"""gunicorn settings for the gateway, from the gateway's settings (serving/gateway/config.py)."""

import gc
import os
import socket
import sys
from pathlib import Path

# gunicorn's own script does not put the working directory on sys.path before reading this file.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from serving.gateway.config import load_config  # noqa: E402

settings = load_config()  # a bad value stops gunicorn here, with the variable's name
bind = f"{settings['GATEWAY_HOST']}:{settings['GATEWAY_PORT']}"
# Decoding and preprocessing hold the GIL: one process per core the gateway may use. Most of a
# request's time is the wait on the model server: enough threads each keep requests in flight
# for the model server to batch, and let kept-alive connections keep their thread (http_worker.py).
workers = settings["GATEWAY_WORKERS"]
threads = settings["GATEWAY_THREADS"]
# gthread, answering gunicorn's own errors as JSON and refusing new connections once a graceful
# stop begins.
worker_class = "serving.gateway.http_worker.GatewayThreadWorker"
# A SO_REUSEPORT socket per worker: the kernel spreads new connections evenly over the workers,
# where on one shared socket one worker may win every accept of a burst.
reuse_port = settings["GATEWAY_REUSE_PORT"]
timeout = settings["GATEWAY_WORKER_TIMEOUT"]
graceful_timeout = settings["GATEWAY_GRACEFUL_TIMEOUT"]
keepalive = 5
accesslog = None  # the app logs one line per request itself
loglevel = settings["LOG_LEVEL"].lower()
# gunicorn >= 25 opens a control socket for gunicornc at one path per user ($HOME/.gunicorn/gunicorn.ctl):
# every gateway on a host (replicas, tests) would take it over from the one before. Nothing here uses it.
control_socket_disable = True


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
    """Leave the loaded app's objects out of garbage collection from now on: a full collection
    would walk them all under the GIL, stalling every request of the worker."""
    gc.collect()
    gc.freeze()


def child_exit(server, worker):
    """Drop a dead worker's live gauges from the multiprocess metrics (PROMETHEUS_MULTIPROC_DIR)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(worker.pid)
