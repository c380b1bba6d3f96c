"""Coalescing: concurrent predictions of one model version share Predict calls.

The CallPlanner's ordering, splitting, deadlines and errors are driven here through a client whose
calls the test answers; the real gunicorn gateway in front of a real model server then shows
shared calls happen under concurrency (and not when switched off), each request getting its rows.
"""

from __future__ import annotations

import re
import shutil
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from serving.gateway.call_planner import CallPlanner
from serving.gateway.errors import DeadlineExceededError, ModelServerUnavailableError
from serving.gateway.model_server_client import Answer, PredictCall, joined_request_ids
from tests.conftest import encode
from tests.gateway_stack import GatewayProcess, ModelServerProcess, export_slow_model


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
        return pool.submit(coalescer.predict, predict_call(value, images, request_id), time.monotonic() + timeout)

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
        assert [future.result(10)[1]["out"].tolist() for future in queued] == [[v * 10.0] * 3 for v in (1, 2, 3)]


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


MODELS = ["mnist", "slow", "pooled"]


@pytest.fixture(scope="module")
def slow_stack(tmp_path_factory, models_dir):
    """A model server with the mnist test model, a model taking 0.3 s per call and one that also
    answers one row for the whole batch, and two one-worker gateways in front: coalescing on
    (one call in flight at a time) and off."""
    base = tmp_path_factory.mktemp("coalescing-models")
    shutil.copytree(models_dir / "mnist" / "1", base / "mnist" / "1")
    export_slow_model(base / "slow" / "1", 0.3)
    export_slow_model(base / "pooled" / "1", 0.3, per_image=False)
    config = base / "models.config"
    config.write_text(
        "model_config_list {\n"
        + "".join(f'  config {{ name: "{n}" base_path: "{base / n}" model_platform: "tensorflow" }}\n'
                  for n in MODELS)
        + "}\n"
    )
    logs = tmp_path_factory.mktemp("coalescing-logs")
    server = ModelServerProcess(config, logs, flags=("--tensorflow_inter_op_parallelism=8",))
    server.start(MODELS)
    gateways = {
        setting: GatewayProcess(server.target, base, logs / f"gateway-{setting}.log", env={
            "MODELS": ",".join(MODELS), "COALESCE_PREDICTIONS": setting, "COALESCE_MAX_IN_FLIGHT": "1",
        })
        for setting in ("true", "false")
    }
    try:
        for gateway in gateways.values():
            gateway.start(wait_path="/readyz")
        yield gateways
    finally:
        for gateway in gateways.values():
            if gateway.process is not None:
                gateway.stop()
        server.stop()


def calls_and_images(gateway: GatewayProcess, model: str) -> tuple[float, float]:
    """(Predict calls, images in them) for `model`, from the gateway's /metrics."""
    text = requests.get(f"{gateway.url}/metrics", timeout=10).text
    values = {}
    for what in ("count", "sum"):
        match = re.search(rf'^pixelgate_model_server_batch_images_{what}{{model="{model}"}} (\S+)$', text, re.M)
        values[what] = float(match.group(1)) if match else 0.0
    return values["count"], values["sum"]


@pytest.mark.parametrize(("setting", "shared"), [("true", True), ("false", False)])
def test_concurrent_requests_share_calls_only_when_coalescing_is_on(slow_stack, test_images, setting, shared):
    gateway = slow_stack[setting]
    digit = encode(test_images["mnist"][0][0])
    before = calls_and_images(gateway, "slow")
    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(
            lambda _: requests.post(f"{gateway.url}/v1/models/slow:predict", data=digit,
                                    headers={"Content-Type": "image/png"}, timeout=30), range(8)))
    assert [a.status_code for a in answers] == [200] * 8
    assert {a.json()["predictions"][0]["class_index"] for a in answers} == {3}
    after = calls_and_images(gateway, "slow")
    calls, images = after[0] - before[0], after[1] - before[1]
    assert images == 8
    # With one call in flight, the 7 requests arriving during the first 0.3 s call queue and share.
    assert (calls < 8) if shared else (calls == 8)


def test_shared_calls_give_each_request_the_answer_it_gets_alone(slow_stack, test_images):
    gateway = slow_stack["true"]
    images, _ = test_images["mnist"]
    payloads = [encode(image) for image in images[:24]]

    def ask(payload: bytes) -> list[float]:
        response = requests.post(f"{gateway.url}/v1/models/mnist:predict?top_k=10", data=payload,
                                 headers={"Content-Type": "image/png"}, timeout=30)
        assert response.status_code == 200, response.text
        return [entry["probability"] for entry in sorted(response.json()["predictions"][0]["top_k"],
                                                          key=lambda entry: entry["class_index"])]

    alone = [ask(p) for p in payloads]
    before = calls_and_images(gateway, "mnist")
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(ask, payloads * 4))
    after = calls_and_images(gateway, "mnist")
    np.testing.assert_allclose(np.array(together), np.array(alone * 4), rtol=1e-5, atol=1e-6)
    assert after[1] - before[1] == 96
    assert after[0] - before[0] < 96  # 8 clients at once, one call out at a time: calls were shared


def test_a_model_whose_answer_cannot_be_split_falls_back_to_one_call_per_request(slow_stack, test_images):
    gateway = slow_stack["true"]
    digit = encode(test_images["mnist"][0][0])

    def four_at_once() -> tuple[list[int], float]:
        before = calls_and_images(gateway, "pooled")
        with ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(
                lambda _: requests.post(f"{gateway.url}/v1/models/pooled:predict", data=digit,
                                        headers={"Content-Type": "image/png"}, timeout=30), range(4)))
        assert [a.status_code for a in answers] == [200] * 4, [a.text for a in answers]
        calls = calls_and_images(gateway, "pooled")[0] - before[0]
        return [a.json()["predictions"][0]["class_index"] for a in answers], calls

    classes, _ = four_at_once()  # three queue behind the first call; their shared answer is one row
    assert classes == [3] * 4
    log = gateway.log_file.read_text()
    assert log.count("predictions are not coalesced") == 1, log[-2000:]
    classes, calls = four_at_once()
    assert classes == [3] * 4
    assert calls == 4  # remembered: each request now goes alone


def test_several_images_to_a_model_without_one_row_per_image_answer_503(slow_stack, test_images):
    """Its answer cannot be told apart by image: a clear error, not rows cut out of one answer."""
    digit = encode(test_images["mnist"][0][0])
    response = requests.post(f"{slow_stack['true'].url}/v1/models/pooled:predict",
                             files=[("image", digit), ("image", digit)], timeout=30)
    assert (response.status_code, response.json()["code"]) == (503, "model_misconfigured")
    assert "one row per image" in response.json()["error"]


def metric(gateway: GatewayProcess, name: str, **labels: str) -> float:
    """One sample of the gateway's /metrics (0 while the series does not exist yet)."""
    text = requests.get(f"{gateway.url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


def test_a_failed_shared_call_counts_once_in_the_model_server_errors(slow_stack, test_images, tmp_path):
    """Every call to the 0.3 s model outlives a 0.2 s deadline: eight requests answer 504, and the
    model-server error counter counts the calls that failed, not the requests they carried (nor a
    request that gave up while queued, which made no call)."""
    shared = slow_stack["true"]
    gateway = GatewayProcess(shared.model_server, shared.models_dir, tmp_path / "gateway.log", env={
        "MODELS": ",".join(MODELS), "COALESCE_PREDICTIONS": "true", "COALESCE_MAX_IN_FLIGHT": "1",
        "REQUEST_TIMEOUT_SECONDS": "0.2",
    })
    gateway.start()
    try:
        digit = encode(test_images["mnist"][0][0])
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(
                lambda _: requests.post(f"{gateway.url}/v1/models/slow:predict", data=digit,
                                        headers={"Content-Type": "image/png"}, timeout=30), range(8)))
        assert [a.status_code for a in answers] == [504] * 8
        assert {a.json()["code"] for a in answers} == {"deadline_exceeded"}
        calls, _ = calls_and_images(gateway, "slow")
        errors = metric(gateway, "pixelgate_model_server_errors_total", method="Predict", code="DEADLINE_EXCEEDED")
        assert 1 <= calls < 8  # the requests queued behind the first call shared the next
        assert errors == calls
        assert metric(gateway, "pixelgate_requests_total", model="slow", status="504") == 8
    finally:
        gateway.stop()


def test_a_shared_calls_request_ids_are_cut_at_whole_ids_below_grpcs_metadata_limit():
    ids = [f"{index:03d}" + "x" * 125 for index in range(32)]  # 32 clients' 128-character IDs
    joined = joined_request_ids(ids)
    assert 0 < len(joined) <= 1024
    assert joined.split(",") == ids[: len(joined.split(","))]
    assert joined_request_ids(["a", "b"]) == "a,b"
