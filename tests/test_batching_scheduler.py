"""Server-side batching's scheduler, with a plain function as the session: queue limits, deadlines,
merging concurrent runs without mixing their rows, and cancelled callers.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent import futures

import grpc
import numpy as np
import pytest

from serving.model_server.batching import BatchingOptions, BatchingSession, BatchScheduler
from serving.model_server.batching.scheduler import LoopEvent
from serving.model_server.errors import ModelServerError
from serving.model_server.run_options import current_deadline, run_timeout


class GatedRun:
    """A session run that doubles its input and holds each batch until the test opens the gate."""

    def __init__(self) -> None:
        self.gate = threading.Event()
        self.started = threading.Semaphore(0)
        self.batch_sizes: list[int] = []

    def __call__(self, feeds, fetches):
        self.batch_sizes.append(len(feeds[0][1]))
        self.started.release()
        self.gate.wait(timeout=30)
        return [feeds[0][1] * 2.0 for _ in fetches]


def session_with(run, **options) -> tuple[BatchScheduler, BatchingSession]:
    scheduler = BatchScheduler(BatchingOptions(**{"num_batch_threads": 1, **options}))
    return scheduler, BatchingSession(scheduler, run, "test")


def run_session(session: BatchingSession, feeds, fetches):
    """A run from a thread that waits for it, as a REST request's does."""
    return asyncio.run(session.run(feeds, fetches))


def test_full_queue_answers_unavailable_at_once():
    run = GatedRun()
    scheduler, session = session_with(run, max_batch_size=1, max_enqueued_batches=1)
    with futures.ThreadPoolExecutor(4) as pool:
        running = pool.submit(run_session, session, [("x", np.ones((1, 2)))], ["y"])
        run.started.acquire(timeout=30)  # the only batch thread is busy with it
        # Room for one more batch of one: of three at once, one queues and two are refused.
        others = [
            pool.submit(run_session, session, [("x", np.full((1, 2), float(n)))], ["y"]) for n in range(3)
        ]
        completed = futures.as_completed(others, timeout=30)
        refused = [next(completed), next(completed)]  # the queued one cannot end before the gate opens
        run.gate.set()
        for attempt in refused:
            error = attempt.exception()
            assert isinstance(error, ModelServerError) and error.code == grpc.StatusCode.UNAVAILABLE
            assert error.message == (
                "The batch scheduling queue to which this task was submitted is full; "
                "currently 1 batches enqueued and max_enqueued_batches is 1"
            )
        (accepted,) = [attempt for attempt in others if attempt not in refused]
        np.testing.assert_array_equal(running.result()[0], [[2.0, 2.0]])
        number = others.index(accepted)
        np.testing.assert_array_equal(accepted.result()[0], [[2.0 * number, 2.0 * number]])
    scheduler.stop()


def test_a_run_whose_deadline_passed_in_the_queue_is_not_run():
    run = GatedRun()
    scheduler, session = session_with(run, max_batch_size=4)
    with futures.ThreadPoolExecutor(1) as pool:
        blocker = pool.submit(run_session, session, [("x", np.ones((1, 1)))], ["y"])
        run.started.acquire(timeout=30)
        with run_timeout(0.0), pytest.raises(ModelServerError) as expired:
            threading.Timer(0.2, run.gate.set).start()
            run_session(session, [("x", np.ones((1, 1)))], ["y"])
        blocker.result()
    assert expired.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert expired.value.message == "Run() timeout exceeded while waiting in batching queue"
    assert run.batch_sizes == [1]  # the expired run never reached the session
    scheduler.stop()


def test_a_batch_runs_with_the_latest_deadline_of_its_requests():
    seen = []

    def run(feeds, fetches):
        seen.append(current_deadline())
        return [feeds[0][1]]

    scheduler, session = session_with(run, max_batch_size=4)
    with run_timeout(60):
        run_session(session, [("x", np.ones((1, 1)))], ["y"])
    without = run_session(session, [("x", np.ones((1, 1)))], ["y"])
    scheduler.stop()
    assert seen[0] is not None and 50 < seen[0] - time.monotonic() <= 60  # passed on to the session run
    assert seen[1] is None and without[0].shape == (1, 1)


def test_concurrent_runs_merge_and_each_gets_its_own_rows():
    scheduler, session = session_with(lambda feeds, fetches: [feeds[0][1] * 10 + 1], max_batch_size=16)
    inputs = [np.full((1 + index % 3, 2), float(index)) for index in range(400)]
    with futures.ThreadPoolExecutor(32) as pool:
        answers = list(pool.map(lambda x: run_session(session, [("x", x)], ["y"])[0], inputs))
    for given, answer in zip(inputs, answers, strict=True):
        np.testing.assert_array_equal(answer, given * 10 + 1)
    scheduler.stop()


def test_coroutines_await_their_batches_on_one_thread_and_each_gets_its_own_rows():
    """300 calls from one event loop, no thread each, merge into batches without mixing."""
    calls = []

    def run(feeds, fetches):
        calls.append(threading.current_thread().name)
        return [feeds[0][1] * 10 + 1]

    # Room for all of them at once: 600 rows in batches of 16.
    scheduler, session = session_with(run, max_batch_size=16, max_enqueued_batches=64)
    inputs = [np.full((1 + index % 3, 2), float(index)) for index in range(300)]

    async def ask_all():
        return await asyncio.gather(*(session.run([("x", x)], ["y"]) for x in inputs))

    threads_before = threading.active_count()
    answers = asyncio.run(ask_all())
    scheduler.stop()
    for given, (answer,) in zip(inputs, answers, strict=True):
        np.testing.assert_array_equal(answer, given * 10 + 1)
    assert len(calls) < len(inputs)  # they shared session runs
    # Run on the one batch thread; no thread was started for the waiters.
    assert set(calls) == {f"{scheduler.options.thread_pool_name}_0"}
    assert threading.active_count() <= threads_before


def test_a_cancelled_coroutine_leaves_its_batch_to_the_others():
    run = GatedRun()
    scheduler, session = session_with(run, max_batch_size=4, batch_timeout_micros=10_000_000)

    async def scenario():
        first = asyncio.ensure_future(session.run([("x", np.ones((1, 1)))], ["y"]))
        second = asyncio.ensure_future(session.run([("x", np.full((1, 1), 3.0))], ["y"]))
        await asyncio.sleep(0.05)  # both queued in one open batch
        first.cancel()
        # Close the batch: a task of 2 rows fills it to 4.
        third = asyncio.ensure_future(session.run([("x", np.full((2, 1), 5.0))], ["y"]))
        run.gate.set()
        return first, await second, await third

    first, second, third = asyncio.run(scenario())
    scheduler.stop()
    assert first.cancelled()
    np.testing.assert_array_equal(second[0], [[6.0]])
    np.testing.assert_array_equal(third[0], [[10.0], [10.0]])
    assert run.batch_sizes == [4]  # the cancelled caller's row still ran, with the others


def test_an_answer_after_the_loop_closed_is_dropped_quietly():
    loop = asyncio.new_event_loop()
    done = LoopEvent(loop)
    loop.close()
    done.set()  # a batch thread finishing after the server stopped: no error
