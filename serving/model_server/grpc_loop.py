"""grpcio's asyncio server on an event loop of its own, driven like `grpc.Server` from any thread.

Why asyncio: with server-side batching a call mostly waits for its batch; on the loop it
holds no thread meanwhile, and a finished batch wakes the loop once to answer all its calls
(a thread per call would need a chain of thread wake-ups per answer; docs/benchmarks.md).
The REST edge's threads submit the core's coroutines to the same loop. A plain-function
method (HandleReloadConfigRequest, which blocks while it loads) runs on `executor`,
grpcio's "migration thread pool".
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable, Sequence
from concurrent import futures
from typing import Any, TypeVar

import grpc

Result = TypeVar("Result")


class LoopGrpcServer:
    """A `grpc.aio.Server` running on its own thread's event loop, with grpc.Server's blocking calls."""

    def __init__(self, executor: futures.ThreadPoolExecutor, options: Sequence[tuple[str, Any]]) -> None:
        self.executor = executor
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run_loop, name="grpc-loop", daemon=True)
        self._thread.start()
        self._stop_future: futures.Future[None] | None = None
        # Set, under the lock, once close() begins: from then on run() refuses new work instead of
        # handing it to a loop that may never run it.
        self._lock = threading.Lock()
        self._closing = False

        async def create() -> grpc.aio.Server:
            return grpc.aio.server(migration_thread_pool=executor, options=list(options))

        self.server = self.run(create())

    def _run_loop(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coroutine: Awaitable[Result], timeout: float | None = None) -> Result:
        """Run `coroutine` on the server's loop and wait for its result; RuntimeError once closing."""
        with self._lock:
            if self._closing:
                if asyncio.iscoroutine(coroutine):
                    coroutine.close()  # never awaited: say so quietly, not with a warning
                raise RuntimeError("the gRPC server is closed")
            future: futures.Future[Result] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)  # type: ignore[arg-type]
        return future.result(timeout)

    def call(self, function: Callable[..., Result], *args: Any) -> Result:
        """Call `function(*args)` on the loop's thread: grpc.aio's objects belong to it."""

        async def call() -> Result:
            return function(*args)

        return self.run(call())

    # grpc.Server's interface, as ModelServer uses it ------------------------------------

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self.call(self.server.add_generic_rpc_handlers, handlers)

    def add_registered_method_handlers(self, service_name: str, handlers: dict) -> None:
        self.call(self.server.add_registered_method_handlers, service_name, handlers)

    def add_insecure_port(self, address: str) -> int:
        return self.call(self.server.add_insecure_port, address)

    def add_secure_port(self, address: str, credentials: grpc.ServerCredentials) -> int:
        return self.call(self.server.add_secure_port, address, credentials)

    def start(self) -> None:
        self.run(self.server.start())

    def stop(self, grace: float | None) -> threading.Event:
        """Refuse new calls and give those in flight `grace` seconds; the event is set once all ended."""
        stopped = threading.Event()
        if self._stop_future is None:
            self._stop_future = asyncio.run_coroutine_threadsafe(self.server.stop(grace), self.loop)
        self._stop_future.add_done_callback(lambda _: stopped.set())
        return stopped

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        """Block until the server stopped; True when `timeout` passed first, as grpc.Server's."""
        if self.closed:  # stopped and closed already
            return False
        try:
            return self.run(self.server.wait_for_termination(timeout))
        except (RuntimeError, futures.CancelledError):  # closed meanwhile: terminated
            return False

    @property
    def closed(self) -> bool:
        """True once close() has begun."""
        return self._closing

    def close(self) -> None:
        """Stop the server if nobody did, let the thread pool's calls end, then end the loop.

        Not from the loop's thread or the pool's. The pool drains first, while the loop still
        runs: a plain method's abort() waits on the loop. Then whatever task is left (a caller
        of run() racing this close, for one) is cancelled and awaited, as asyncio.run does.
        """
        with self._lock:
            if self._closing:
                return
            self._closing = True
        if self._stop_future is None:
            self._stop_future = asyncio.run_coroutine_threadsafe(self.server.stop(None), self.loop)
        futures.wait([self._stop_future])
        self.executor.shutdown(wait=True)
        asyncio.run_coroutine_threadsafe(_cancel_remaining_tasks(), self.loop).result()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join()
        self.loop.close()


async def _cancel_remaining_tasks() -> None:
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
