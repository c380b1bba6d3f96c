"""The soak's load: PNG uploads from one keep-alive connection per thread, a closed loop that
finds the gateway's saturating rate, and an open loop that holds a rate while sampling memory.
"""

from __future__ import annotations

import http.client
import io
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np
from PIL import Image

from bench.processes import process_tree_rss

logger = logging.getLogger("bench.soak")
PROBE_CONCURRENCY = (2, 4, 8, 16)


def digit_images(count: int = 16, seed: int = 0) -> list[bytes]:
    """Distinct 28x28 PNGs of light strokes on black, like MNIST digits."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        pixels = np.zeros((28, 28), np.uint8)
        for _ in range(3):
            row, column = rng.integers(6, 22, 2)
            pixels[row - 6 : row + 6, column - 2 : column + 2] = 255
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="PNG")
        images.append(buffer.getvalue())
    return images


@dataclass
class Outcome:
    started: float
    seconds: float
    status: int  # 0: no HTTP answer


class Client:
    """One keep-alive connection per thread; http.client costs less CPU than requests."""

    def __init__(self, url: str, model: str, images: list[bytes], headers: dict[str, str]):
        parts = urlsplit(url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.path = f"/v1/models/{model}:predict"
        self.images, self.headers = images, {"Content-Type": "image/png", **headers}
        self._local = threading.local()
        self._counter = 0
        self._connections: list[http.client.HTTPConnection] = []
        self._lock = threading.Lock()

    def _connection(self) -> http.client.HTTPConnection:
        if getattr(self._local, "connection", None) is None:
            self._local.connection = http.client.HTTPConnection(self.host, self.port, timeout=60)
            with self._lock:
                self._connections.append(self._local.connection)
        return self._local.connection

    def close(self) -> None:
        with self._lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()

    def send(self) -> Outcome:
        self._counter += 1
        body = self.images[self._counter % len(self.images)]
        started = time.monotonic()
        try:
            connection = self._connection()
            connection.request("POST", self.path, body=body, headers=self.headers)
            response = connection.getresponse()
            response.read()
            status = response.status
        except (OSError, http.client.HTTPException):
            self._local.connection.close()
            self._local.connection = None
            status = 0
        return Outcome(started, time.monotonic() - started, status)


def closed_loop_rate(client: Client, concurrency: int, seconds: float) -> float:
    """Requests per second answered 200 with `concurrency` clients sending back to back."""
    deadline = time.monotonic() + seconds
    counts = [0] * concurrency

    def run(index: int) -> None:
        while time.monotonic() < deadline:
            if client.send().status == 200:
                counts[index] += 1

    threads = [threading.Thread(target=run, args=(index,)) for index in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sum(counts) / seconds


def find_saturation(client: Client, seconds_per_level: float) -> tuple[float, dict[int, float]]:
    rates = {}
    for concurrency in PROBE_CONCURRENCY:
        rates[concurrency] = closed_loop_rate(client, concurrency, seconds_per_level)
        logger.info("saturation probe: concurrency %d -> %.1f req/s", concurrency, rates[concurrency])
        if len(rates) > 1 and rates[concurrency] < 1.05 * max(list(rates.values())[:-1]):
            break  # no longer growing: saturated
    return max(rates.values()), rates


def open_loop(
    client: Client, rate: float, seconds: float, pids: dict[str, int], interval: float, workers: int = 64
) -> tuple[list[Outcome], list[tuple[float, dict[str, float]]], int]:
    """Send at `rate` per second for `seconds`, whatever the answers' pace; sample RSS meanwhile."""
    outcomes: list[Outcome] = []
    memory: list[tuple[float, dict[str, float]]] = []
    lock = threading.Lock()
    started = time.monotonic()
    stop = threading.Event()
    late = 0

    def sample_memory() -> None:
        while not stop.is_set():
            sample = {name: process_tree_rss(pid) / 2**20 for name, pid in pids.items()}
            memory.append((time.monotonic() - started, sample))
            stop.wait(min(5.0, interval / 2))

    def record(outcome: Outcome) -> None:
        with lock:
            outcomes.append(outcome)

    sampler = threading.Thread(target=sample_memory, daemon=True)
    sampler.start()
    with ThreadPoolExecutor(workers) as pool:
        pending = []
        for index in range(int(rate * seconds)):
            due = started + index / rate
            delay = due - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            elif delay < -0.1:
                late += 1
            pending.append(pool.submit(lambda: record(client.send())))
            pending = [future for future in pending if not future.done()]
            if len(pending) > workers * 4:
                time.sleep(0.01)  # the gateway fell far behind: do not queue without bound
    stop.set()
    sampler.join()
    return outcomes, memory, late
