"""The deadline of the request being served: TF Serving's RunOptions.timeout_in_ms.

An edge sets it around a call into the core (gRPC: the call's deadline; REST:
--rest_api_timeout_in_ms). The batching queue gives up on a task past it, and
`SavedModelBundle.run_unbatched` hands what is left to Session::Run, which answers
DEADLINE_EXCEEDED when the graph takes longer. A context variable, so each thread
serving a request has its own and the core's signatures need not carry it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Executor
from typing import TypeVar

Result = TypeVar("Result")

# The absolute time.monotonic() by which the current request's session run must end.
_RUN_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("run_deadline", default=None)


@contextlib.contextmanager
def run_timeout(seconds: float | None) -> Iterator[None]:
    """Session runs inside this block carry a timeout of `seconds` (None: none)."""
    token = _RUN_DEADLINE.set(None if seconds is None else time.monotonic() + seconds)
    try:
        yield
    finally:
        _RUN_DEADLINE.reset(token)


def current_deadline() -> float | None:
    """The time.monotonic() deadline set by the innermost `run_timeout`, None when none."""
    return _RUN_DEADLINE.get()


def remaining_timeout_in_ms() -> int | None:
    """RunOptions.timeout_in_ms for a session run starting now; None when there is no deadline.

    At least 1 ms: TensorFlow reads 0 as "no timeout", but a passed deadline must fail.
    """
    deadline = _RUN_DEADLINE.get()
    if deadline is None:
        return None
    return max(math.ceil((deadline - time.monotonic()) * 1000), 1)


async def in_thread(executor: Executor | None, function: Callable[..., Result], *args: object) -> Result:
    """Run blocking `function(*args)` on `executor` from a coroutine, with the caller's deadline.

    A thread cannot be stopped: a caller cancelled meanwhile (its client went away, its deadline
    passed, the server stopped) still waits for the call to end before CancelledError goes on,
    so that what the caller holds (its model version, its slot among --grpc_max_threads) stays
    held while the session runs, as on a thread of its own.
    """
    context = contextvars.copy_context()
    future = asyncio.get_running_loop().run_in_executor(executor, context.run, function, *args)
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        while not future.done():
            try:
                await asyncio.wait([future])
            except asyncio.CancelledError:
                continue
        if not future.cancelled():
            future.exception()  # retrieved: nobody is left to read it
        raise
