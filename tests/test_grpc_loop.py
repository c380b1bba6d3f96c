"""The asyncio gRPC server's edges: its sync facade at close, and blocking work run from a coroutine.

A real grpc.aio server on loopback with generic handlers: no model needed to check that closing
never hangs or leaks a task, and that a cancelled caller keeps what it holds until its thread ends.
"""

from __future__ import annotations

import asyncio
import threading
import time
import warnings
from concurrent import futures

import grpc
import pytest

from serving.model_server.grpc_loop import LoopGrpcServer
from serving.model_server.run_options import in_thread


def _echo_server(executor: futures.ThreadPoolExecutor) -> tuple[LoopGrpcServer, int]:
    server = LoopGrpcServer(executor, [])

    def echo(request: bytes, context: grpc.ServicerContext) -> bytes:
        if request == b"missing":
            context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
        return request

    async def echo_async(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return request

    handlers = {
        "Sync": grpc.unary_unary_rpc_method_handler(echo),
        "Async": grpc.unary_unary_rpc_method_handler(echo_async),
    }
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Echo", handlers)])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port


def test_both_kinds_of_method_answer_and_a_plain_methods_abort_is_its_status():
    executor = futures.ThreadPoolExecutor(2)
    server, port = _echo_server(executor)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            assert channel.unary_unary("/test.Echo/Sync")(b"a", timeout=5) == b"a"
            assert channel.unary_unary("/test.Echo/Async")(b"b", timeout=5) == b"b"
            with pytest.raises(grpc.RpcError) as raised:
                channel.unary_unary("/test.Echo/Sync")(b"missing", timeout=5)
        assert raised.value.code() == grpc.StatusCode.NOT_FOUND
        assert raised.value.details() == "no such thing"
    finally:
        server.stop(None).wait(5)
        server.close()


def test_close_without_stop_shuts_the_server_down_and_later_calls_fail_at_once():
    executor = futures.ThreadPoolExecutor(2)
    server, port = _echo_server(executor)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a coroutine never awaited would warn
        server.close()
        assert server.closed
        assert server.loop.is_closed()
        started = time.monotonic()
        with pytest.raises(RuntimeError, match="closed"):
            server.run(asyncio.sleep(0))
        assert server.wait_for_termination(0.1) is False
        assert time.monotonic() - started < 1
    with pytest.raises(RuntimeError):  # the pool was shut down with the loop
        executor.submit(print)
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel, pytest.raises(grpc.RpcError) as raised:
        channel.unary_unary("/test.Echo/Async")(b"x", timeout=2)
    assert raised.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
    server.close()  # a second close is a no-op


def test_close_ends_a_wait_for_termination_in_another_thread():
    executor = futures.ThreadPoolExecutor(2)
    server, _ = _echo_server(executor)
    results: list[bool] = []
    waiter = threading.Thread(target=lambda: results.append(server.wait_for_termination(30)))
    waiter.start()
    time.sleep(0.1)
    server.close()
    waiter.join(5)
    assert not waiter.is_alive()
    assert results == [False]


def test_a_cancelled_caller_of_in_thread_waits_for_the_threads_call_to_end():
    executor = futures.ThreadPoolExecutor(1)
    events: list[str] = []
    release = threading.Event()

    def blocking() -> str:
        release.wait(5)
        events.append("thread done")
        return "answer"

    async def caller() -> None:
        try:
            await in_thread(executor, blocking)
        except asyncio.CancelledError:
            events.append("caller cancelled")
            raise

    async def main() -> None:
        task = asyncio.create_task(caller())
        await asyncio.sleep(0.05)
        task.cancel()
        await asyncio.sleep(0.05)
        task.cancel()  # a second cancel changes nothing either
        await asyncio.sleep(0.05)
        assert not task.done(), "the caller let go while its thread still ran"
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    try:
        asyncio.run(main())
    finally:
        executor.shutdown()
    assert events == ["thread done", "caller cancelled"]


def test_in_thread_returns_the_result_and_raises_the_error_with_the_callers_context():
    from serving.model_server.run_options import current_deadline, run_timeout

    executor = futures.ThreadPoolExecutor(1)

    def fails() -> None:
        raise ValueError("bad input")

    async def main() -> None:
        with run_timeout(10):
            deadline = await in_thread(executor, current_deadline)
        assert deadline is not None and deadline > time.monotonic()
        with pytest.raises(ValueError, match="bad input"):
            await in_thread(executor, fails)

    try:
        asyncio.run(main())
    finally:
        executor.shutdown()
