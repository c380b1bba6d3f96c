"""The CallPlanner (serving/gateway/call_planner.py): its splitting, sharing, ordering, deadlines and
errors, driven through a model-server client whose calls the test answers.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pytest

from serving.gateway.call_planner import CallPlanner
from serving.gateway.errors import DeadlineExceededError, ModelServerUnavailableError
from serving.gateway.model_server_client import Answer, PredictCall, joined_request_ids


class Calls:
    """A model-server client whose calls stay out until the test answers them: each answer is the
    inputs times 10, one row per image, so every request can check it got its own rows. A blocking
    `send` waits for its answer like a started call, unless the test gives it a BlockingCall."""

    def __init__(self, blocking: BlockingCall | None = None):
        self.started: list[tuple[np.ndarray, list[str], Future]] = []
        self.changed = threading.Condition()
        self.blocking = blocking

    def start(self, call: PredictCall, deadline: float) -> Future:
        future: Future = Future()
        with self.changed:
            self.started.append((call.images, list(call.request_ids), future))
            self.changed.notify_all()
        return future

    def send(self, call: PredictCall, deadline: float) -> Answer:
        if self.blocking is not None:
            return self.blocking(call, deadline)
        return self.start(call, deadline).result()

    def wait_for(self, count: int) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.started) >= count, timeout=10), self.started

    def answer(self, index: int, outputs=None) -> None:
        images, _, future = self.started[index]
        future.set_result(Answer(7, outputs if outputs is not None else {"out": images[:, 0] * 10}))


def planner_of(calls: Calls, max_images: int = 32, max_in_flight: int = 1) -> CallPlanner:
    return CallPlanner(calls, max_images_per_call=max_images, share=True,  # type: ignore[arg-type]
                       max_in_flight=max_in_flight)


def predict_call(value: float, images: int = 1, request_id: str = "") -> PredictCall:
    batch = np.full((images, 3), value, dtype=np.float32)
    return PredictCall("model", 1, "in", ("out",), batch, (request_id,) if request_id else ())


def submitter(coalescer: CallPlanner, calls: Calls, pool: ThreadPoolExecutor):
    def submit(value: float, images: int = 1, request_id: str = "", timeout: float = 10):
        call = predict_call(value, images, request_id)
        return pool.submit(coalescer.predict, call, time.monotonic() + timeout)

    return submit


def wait_queued(coalescer: CallPlanner, count: int) -> None:
    deadline = time.monotonic() + 10
    while sum(len(lane.pending) for lane in coalescer._lanes.values()) < count:
        assert time.monotonic() < deadline, "requests never queued"
        time.sleep(0.005)


def queued_behind_a_call(coalescer: CallPlanner, calls: Calls, submit, values: list[float], images: int = 1):
    """A request whose call is out (max_in_flight=1), then one request per value queued behind it."""
    first = submit(0.0)
    calls.wait_for(1)
    queued = [submit(value, images=images) for value in values]
    wait_queued(coalescer, len(values))
    return first, queued


def test_a_lone_request_goes_at_once_and_gets_its_rows():
    calls = Calls()
    coalescer = planner_of(calls)
    with ThreadPoolExecutor(4) as pool:
        answer = submitter(coalescer, calls, pool)(3.0, images=2, request_id="r1")
        calls.wait_for(1)
        assert calls.started[0][1] == ["r1"]
        calls.answer(0)
        version, outputs = answer.result(10)
    assert version == 7
    np.testing.assert_array_equal(outputs["out"], [30.0, 30.0])


def test_requests_queued_behind_a_call_go_together_each_with_its_own_rows():
    calls = Calls()
    coalescer = planner_of(calls)
    with ThreadPoolExecutor(8) as pool:
        submit = submitter(coalescer, calls, pool)
        first = submit(1.0)
        calls.wait_for(1)
        queued = [submit(float(value), images=value % 3 + 1, request_id=f"r{value}") for value in range(2, 7)]
        wait_queued(coalescer, 5)
        assert len(calls.started) == 1  # nothing else goes while the one call allowed is out
        calls.answer(0)
        calls.wait_for(2)
        images, request_ids, _ = calls.started[1]
        assert len(images) == sum(value % 3 + 1 for value in range(2, 7))
        assert sorted(request_ids) == [f"r{value}" for value in range(2, 7)]
        calls.answer(1)
        np.testing.assert_array_equal(first.result(10)[1]["out"], [10.0])
        for value, future in zip(range(2, 7), queued, strict=True):
            np.testing.assert_array_equal(future.result(10)[1]["out"], [value * 10.0] * (value % 3 + 1))
    assert len(calls.started) == 2 and not coalescer._lanes


def test_a_shared_call_holds_at_most_max_images():
    calls = Calls()
    coalescer = planner_of(calls, max_images=4)
    with ThreadPoolExecutor(8) as pool:
        submit = submitter(coalescer, calls, pool)
        _, queued = queued_behind_a_call(coalescer, calls, submit, [1.0, 2.0, 3.0], images=3)
        for index in range(3):
            calls.answer(index)
            calls.wait_for(index + 2)
            assert len(calls.started[index + 1][0]) == 3  # 3 + 3 would exceed 4: one request per call
        calls.answer(3)
        expected = [[v * 10.0] * 3 for v in (1, 2, 3)]
        assert [future.result(10)[1]["out"].tolist() for future in queued] == expected


def test_max_in_flight_calls_go_at_once():
    calls = Calls()
    coalescer = planner_of(calls, max_in_flight=2)
    with ThreadPoolExecutor(8) as pool:
        submit = submitter(coalescer, calls, pool)
        futures = [submit(1.0), submit(2.0)]
        calls.wait_for(2)
        futures.append(submit(3.0))
        wait_queued(coalescer, 1)
        calls.answer(1)
        calls.wait_for(3)
        calls.answer(0)
        calls.answer(2)
        assert [f.result(10)[1]["out"].tolist() for f in futures] == [[10.0], [20.0], [30.0]]


def test_a_failed_call_fails_every_request_in_it_and_the_next_call_still_goes():
    calls = Calls()
    coalescer = planner_of(calls)
    error = ModelServerUnavailableError("model server unavailable: down")
    with ThreadPoolExecutor(8) as pool:
        submit = submitter(coalescer, calls, pool)
        _, queued = queued_behind_a_call(coalescer, calls, submit, [1.0, 2.0])
        calls.answer(0)
        calls.wait_for(2)
        calls.started[1][2].set_exception(error)
        for future in queued:
            assert future.exception(10) is error
        after = submit(5.0)
        calls.wait_for(3)
        calls.answer(2)
        assert after.result(10)[1]["out"].tolist() == [50.0]


def test_a_request_whose_deadline_passes_in_the_queue_answers_deadline_exceeded_and_is_never_sent():
    calls = Calls()
    coalescer = planner_of(calls)
    with ThreadPoolExecutor(8) as pool:
        submit = submitter(coalescer, calls, pool)
        submit(0.0)
        calls.wait_for(1)
        late = submit(1.0, request_id="late", timeout=0.2)
        with pytest.raises(DeadlineExceededError) as raised:
            late.result(10)  # its 0.2 s pass while the first call is out
        assert (raised.value.status, raised.value.code) == (504, "deadline_exceeded")
        patient = submit(2.0, request_id="ok")
        wait_queued(coalescer, 2)  # the expired request stays queued until a call is next taken
        calls.answer(0)
        calls.wait_for(2)
        assert calls.started[1][1] == ["ok"]  # the expired request is dropped, not sent
        calls.answer(1)
        assert patient.result(10)[1]["out"].tolist() == [20.0]


def test_answers_that_cannot_be_split_by_image_are_asked_again_one_call_per_request():
    calls = Calls()
    coalescer = planner_of(calls)
    with ThreadPoolExecutor(8) as pool:
        submit = submitter(coalescer, calls, pool)
        alone, queued = queued_behind_a_call(coalescer, calls, submit, [1.0, 2.0])
        calls.answer(0, {"scalar": np.float32(1.0)})
        assert alone.result(10)[1]["scalar"] == 1.0  # a call of one request needs no splitting
        calls.wait_for(2)
        calls.answer(1, {"scalar": np.float32(1.0)})
        calls.wait_for(4)  # the shared answer cannot be split: each request makes a call of its own
        assert sorted(len(images) for images, _, _ in calls.started[2:]) == [1, 1]
        calls.answer(2, {"scalar": np.float32(2.0)})
        calls.answer(3, {"scalar": np.float32(2.0)})
        assert [future.result(10)[1]["scalar"] for future in queued] == [2.0, 2.0]
        following = submit(3.0)  # remembered: the next request goes alone, whatever is out
        calls.wait_for(5)
        calls.answer(4)
        assert following.result(10)[1]["out"].tolist() == [30.0]
    assert not coalescer._lanes


def test_a_call_that_cannot_start_fails_its_requests_and_frees_the_key():
    calls = Calls()
    coalescer = planner_of(calls)

    def broken(call, deadline):
        raise ValueError("cannot build the request")

    calls.start = broken  # type: ignore[method-assign]
    with pytest.raises(ValueError, match="cannot build"):
        coalescer.predict(predict_call(0.0), time.monotonic() + 5)
    assert not coalescer._lanes


class BlockingCall:
    """A blocking `send` that stays out until the test releases it; records the thread it ran on."""

    def __init__(self, error: BaseException | None = None):
        self.started, self.release, self.error = threading.Event(), threading.Event(), error
        self.thread: int | None = None
        self.timeout: float | None = None
        self.request_ids: list[str] = []

    def __call__(self, call: PredictCall, deadline: float) -> Answer:
        self.thread, self.timeout = threading.get_ident(), deadline - time.monotonic()
        self.request_ids = list(call.request_ids)
        self.started.set()
        assert self.release.wait(10)
        if self.error is not None:
            raise self.error
        return Answer(7, {"out": call.images[:, 0] * 10})


def test_a_lone_request_makes_its_blocking_call_itself_and_those_queued_meanwhile_share_the_next():
    blocking = BlockingCall()
    calls = Calls(blocking)
    coalescer = planner_of(calls)
    with ThreadPoolExecutor(8) as pool:
        def submit(value: float, request_id: str):
            def on_thread():
                answer = coalescer.predict(predict_call(value, request_id=request_id), time.monotonic() + 5)
                return threading.get_ident(), answer
            return pool.submit(on_thread)

        first = submit(1.0, "lone")
        assert blocking.started.wait(10)
        queued = [submit(2.0, "r2"), submit(3.0, "r3")]
        wait_queued(coalescer, 2)
        assert not calls.started  # nothing else goes while the lone request's call is out
        blocking.release.set()
        thread, (version, outputs) = first.result(10)
        assert thread == blocking.thread and blocking.request_ids == ["lone"]
        assert 4 < blocking.timeout <= 5  # the request's own deadline
        assert (version, outputs["out"].tolist()) == (7, [10.0])
        calls.wait_for(1)  # those queued behind it go as one shared call, as behind any call
        assert sorted(calls.started[0][1]) == ["r2", "r3"]
        calls.answer(0)
        assert [future.result(10)[1][1]["out"].tolist() for future in queued] == [[20.0], [30.0]]
    assert not coalescer._lanes


def test_a_failed_blocking_call_fails_its_request_and_frees_the_key():
    error = ModelServerUnavailableError("model server unavailable: down")
    blocking = BlockingCall(error)
    blocking.release.set()
    coalescer = planner_of(Calls(blocking))
    with pytest.raises(ModelServerUnavailableError) as raised:
        coalescer.predict(predict_call(0.0), time.monotonic() + 5)
    assert raised.value is error and not coalescer._lanes


def test_a_shared_calls_request_ids_are_cut_at_whole_ids_below_grpcs_metadata_limit():
    ids = [f"{index:03d}" + "x" * 125 for index in range(32)]  # 32 clients' 128-character IDs
    joined = joined_request_ids(ids)
    assert 0 < len(joined) <= 1024
    assert joined.split(",") == ids[: len(joined.split(","))]
    assert joined_request_ids(["a", "b"]) == "a,b"


def test_parts_answered_by_different_versions_are_never_joined():
    calls = Calls()
    coalescer = planner_of(calls, max_images=2)
    unpinned = PredictCall("model", None, "in", ("out",), np.ones((4, 3), np.float32))
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(coalescer.predict, unpinned, time.monotonic() + 10)
        calls.wait_for(2)
        calls.answer(0)  # version 7
        images, _, future = calls.started[1]
        future.set_result(Answer(8, {"out": images[:, 0] * 10}))  # another replica, mid-rollout
        with pytest.raises(ModelServerUnavailableError, match=r"versions \[7, 8\].*retry"):
            answer.result(10)
