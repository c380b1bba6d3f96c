"""HTTP load: `wrk` (C, one thread, a Lua script for the multipart POST) for fixed concurrency,
and a small asyncio client for a fixed arrival rate, or for everything where wrk is missing.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

from bench.pacing import paced
from bench.stats import LoadResult, from_latencies

logger = logging.getLogger(__name__)

MAX_CONNECTIONS_OPEN_LOOP = 256

# Cycles through the request bodies it is given; prints one JSON line when done.
_WRK_SCRIPT = """
local bodies, index = {}, 0
for _, path in ipairs({%(paths)s}) do
  local file = assert(io.open(path, "rb")); bodies[#bodies + 1] = file:read("*a"); file:close()
end
local headers = {["Content-Type"] = "%(content_type)s"}
request = function()
  index = index %% #bodies + 1
  return wrk.format("POST", "%(path)s", headers, bodies[index])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('WRK_RESULT {"requests": %%d, "duration_us": %%d, "status": %%d, "connect": %%d, '
    .. '"read": %%d, "write": %%d, "timeout": %%d, "p50": %%d, "p95": %%d, "p99": %%d}\\n',
    summary.requests, summary.duration, e.status, e.connect, e.read, e.write, e.timeout,
    latency:percentile(50), latency:percentile(95), latency:percentile(99)))
end
"""


def find_wrk(install: bool = True) -> str | None:
    """wrk's path; installs Debian's package when missing and allowed (root with apt-get)."""
    path = shutil.which("wrk")
    if path or not install or not shutil.which("apt-get"):
        return path
    import os

    if os.geteuid() != 0:
        return None
    logger.info("installing wrk with apt-get (the HTTP load generator)")
    subprocess.run(["apt-get", "install", "-y", "-q", "wrk"], check=False, capture_output=True, timeout=300)
    return shutil.which("wrk")


def run_wrk(
    wrk: str,
    url: str,
    bodies: list[bytes],
    content_type: str,
    concurrency: int,
    seconds: float,
    *,
    label: str,
    model: str,
) -> LoadResult:
    with tempfile.TemporaryDirectory(prefix="pixelgate-wrk-") as directory:
        paths = []
        for index, body in enumerate(bodies):
            path = Path(directory) / f"body{index}"
            path.write_bytes(body)
            paths.append(f'"{path}"')
        script = Path(directory) / "post.lua"
        script.write_text(
            _WRK_SCRIPT
            % {"paths": ", ".join(paths), "content_type": content_type, "path": urlsplit(url).path}
        )
        command = [
            wrk,
            "-t1",
            f"-c{concurrency}",
            f"-d{max(1, round(seconds))}s",
            "--timeout",
            "30s",
            "-s",
            str(script),
            url,
        ]
        output = subprocess.run(
            command, capture_output=True, text=True, timeout=seconds + 60, check=True
        ).stdout
    line = next(line for line in output.splitlines() if line.startswith("WRK_RESULT "))
    summary = json.loads(line.removeprefix("WRK_RESULT "))
    errors = {
        kind: summary[kind] for kind in ("status", "connect", "read", "write", "timeout") if summary[kind]
    }
    duration = summary["duration_us"] / 1e6
    return LoadResult(
        label,
        model,
        concurrency,
        None,
        summary["requests"] - summary["status"],
        duration,
        p50_ms=summary["p50"] / 1000,
        p95_ms=summary["p95"] / 1000,
        p99_ms=summary["p99"] / 1000,
        errors=errors,
        tool="wrk",
        sent=summary["requests"],
    )


def run_python_closed_loop(
    url: str, bodies: list[bytes], content_type: str, concurrency: int, seconds: float, *,
    label: str, model: str,
) -> LoadResult:
    return asyncio.run(_closed_loop(url, bodies, content_type, concurrency, seconds, label, model))


def run_python_open_loop(
    url: str, bodies: list[bytes], content_type: str, rate: float, seconds: float, *, label: str, model: str
) -> LoadResult:
    return asyncio.run(_open_loop(url, bodies, content_type, rate, seconds, label, model))


class _Connection:
    """One keep-alive HTTP/1.1 connection sending prepared requests, reading whole answers."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def send(self, request: bytes) -> int:
        if self.streams is None:
            self.streams = await asyncio.open_connection(self.host, self.port)
        reader, writer = self.streams
        writer.write(request)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = dict(line.lower().split(": ", 1) for line in lines[1:] if ": " in line)
        await reader.readexactly(int(headers.get("content-length", 0)))
        if headers.get("connection") == "close" or lines[0].startswith("HTTP/1.0"):
            await self.close()
        return status

    async def close(self) -> None:
        if self.streams is not None:
            self.streams[1].close()
            self.streams = None


def _prepared_requests(url: str, bodies: list[bytes], content_type: str) -> list[bytes]:
    parts = urlsplit(url)
    return [
        (
            f"POST {parts.path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        + body
        for body in bodies
    ]


async def _closed_loop(url, bodies, content_type, concurrency, seconds, label, model) -> LoadResult:
    parts = urlsplit(url)
    requests = itertools.cycle(_prepared_requests(url, bodies, content_type))
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    end = time.perf_counter() + seconds

    async def worker() -> None:
        connection = _Connection(parts.hostname or "127.0.0.1", parts.port or 80)
        while (sent := time.perf_counter()) < end:
            try:
                status = await connection.send(next(requests))
            except (OSError, asyncio.IncompleteReadError, ValueError) as error:
                errors[type(error).__name__] += 1
                await connection.close()
                continue
            if status == 200:
                latencies.append(time.perf_counter() - sent)
            else:
                errors[f"HTTP {status}"] += 1
        await connection.close()

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return from_latencies(label, model, latencies, seconds, errors, concurrency=concurrency, tool="python")


async def _open_loop(url, bodies, content_type, rate, seconds, label, model) -> LoadResult:
    parts = urlsplit(url)
    prepared = _prepared_requests(url, bodies, content_type)
    idle: list[_Connection] = []
    opened = 0
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    in_flight: set[asyncio.Task] = set()

    async def call(request: bytes, scheduled: float, connection: _Connection) -> None:
        try:
            status = await connection.send(request)
        except (OSError, asyncio.IncompleteReadError, ValueError) as error:
            errors[type(error).__name__] += 1
            await connection.close()
            status = 0
        if status == 200:
            latencies.append(time.perf_counter() - scheduled)
        elif status:
            errors[f"HTTP {status}"] += 1
        idle.append(connection)

    async for request, scheduled in paced(prepared, rate, seconds):
        if not idle:
            if opened >= MAX_CONNECTIONS_OPEN_LOOP:
                errors["GENERATOR_OVERLOADED"] += 1
                continue
            idle.append(_Connection(parts.hostname or "127.0.0.1", parts.port or 80))
            opened += 1
        task = asyncio.create_task(call(request, scheduled, idle.pop()))
        in_flight.add(task)
        task.add_done_callback(in_flight.discard)
    await asyncio.gather(*in_flight)
    for connection in idle:
        await connection.close()
    return from_latencies(label, model, latencies, seconds, errors, rate=rate, tool="python")
