"""The serving processes the benchmarks watch: a process and its children (gunicorn's master
and workers), their resident memory, and the process listening on a port.
"""

from __future__ import annotations

from pathlib import Path

import psutil


def process_tree(pid: int) -> list[int]:
    """`pid` and its children (gunicorn's workers), as they are now."""
    children = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == pid:
                children.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return [pid, *children]


def process_tree_rss(pid: int) -> int:
    """RSS in bytes of a process and its children (gunicorn's master and workers)."""
    try:
        process = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])
    except psutil.NoSuchProcess:
        return 0


def worker_rss_mb(master_pid: int) -> list[float]:
    """Resident memory of each gunicorn worker (the master's children), in MB."""
    sizes = []
    for worker in process_tree(master_pid)[1:]:
        try:
            sizes.append(psutil.Process(worker).memory_info().rss / 2**20)
        except psutil.NoSuchProcess:
            continue
    return sorted(sizes)


def listening_pid(port: int) -> int:
    """The process listening on `port`; for gunicorn (whose workers share the socket), its master."""
    for connection in psutil.net_connections(kind="tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port and connection.pid:
            process = psutil.Process(connection.pid)
            while (parent := process.parent()) is not None and parent.cmdline() == process.cmdline():
                process = parent  # a forked worker has its master's command line
            return process.pid
    raise LookupError(f"no process listens on port {port}")
