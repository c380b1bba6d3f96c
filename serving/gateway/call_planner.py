"""Which Predict calls a request becomes: split when it holds more images than one call may,
shared with concurrent requests for the same model version otherwise.

Sharing is a group commit: while `max_in_flight` calls for a key are out, new requests queue;
each call that returns sends whatever has queued as one batch. A request that finds no call
out goes at once (no timer, no added latency).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections import deque
from collections.abc import Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from serving.gateway.errors import DeadlineExceededError, ModelServerUnavailableError
from serving.gateway.model_server_client import Answer, ModelServerClient, PredictCall

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class _Waiter:
    """One request waiting for its rows of a shared call."""

    call: PredictCall
    deadline: float  # time.monotonic()
    done: threading.Event = field(default_factory=threading.Event)
    answer: Answer | None = None
    error: BaseException | None = None
    send_alone: bool = False  # the shared call's answer could not be split: make a call of its own

    def finish(self, answer: Answer | None = None, error: BaseException | None = None,
               send_alone: bool = False) -> None:
        self.answer, self.error, self.send_alone = answer, error, send_alone
        self.done.set()


@dataclass(eq=False)
class _Lane:
    """The queue and the calls in flight of one PredictCall.key."""

    pending: deque[_Waiter] = field(default_factory=deque)
    in_flight: int = 0


class CallPlanner:
    """Sends each request's PredictCall through `client` as the calls described above; thread-safe,
    one per process."""

    def __init__(self, client: ModelServerClient, max_images_per_call: int = 32, share: bool = True,
                 max_in_flight: int = 1):
        if max_images_per_call < 1 or max_in_flight < 1:
            raise ValueError("max_images_per_call and max_in_flight must be at least 1")
        self.client = client
        self.max_images_per_call = max_images_per_call
        self.share = share
        self.max_in_flight = max_in_flight
        self._lanes: dict[Hashable, _Lane] = {}
        self._unsplittable: set[Hashable] = set()  # keys whose answers are not one row per image
        self._lock = threading.Lock()

    def predict(self, call: PredictCall, deadline: float) -> Answer:
        """`call`'s answer by `deadline` (time.monotonic()); raises a GatewayError."""
        images = len(call.images)
        if images > self.max_images_per_call:
            return self._send_in_parts(call, deadline)
        if self.share and images < self.max_images_per_call and call.key not in self._unsplittable:
            return self._send_shared(call, deadline)
        return self.client.send(call, deadline)

    def _send_in_parts(self, call: PredictCall, deadline: float) -> Answer:
        """Parts of at most max_images_per_call sent at once (they run side by side, and a model
        server without large-batch splitting refuses a call over its max_batch_size), their
        answers joined in order; one call when they are not one row per image."""
        size = self.max_images_per_call
        parts = [dataclasses.replace(call, images=call.images[start:start + size])
                 for start in range(0, len(call.images), size)]
        pending = [self.client.start(part, deadline) for part in parts]
        try:
            answers = [future.result() for future in pending]
        except BaseException:
            for future in pending:
                future.cancel()  # the request has failed: the other parts need not run
            raise
        pairs = zip(answers, parts, strict=True)
        if not all(_one_row_per_image(answer, len(part.images)) for answer, part in pairs):
            return self.client.send(call, deadline)
        if len({answer.version for answer in answers}) > 1:  # unpinned parts met replicas mid-rollout
            raise ModelServerUnavailableError(
                f"model '{call.model}': the model servers answered the parts of this request with versions "
                f"{sorted({answer.version for answer in answers})} (a new version is rolling out); retry")
        outputs = {key: np.concatenate([answer.outputs[key] for answer in answers])
                   for key in answers[0].outputs}
        return Answer(answers[0].version, outputs)

    def _send_shared(self, call: PredictCall, deadline: float) -> Answer:
        waiter, seconds = _Waiter(call, deadline), deadline - time.monotonic()
        with self._lock:
            lane = self._lanes.get(call.key)
            if lane is None:
                lane = self._lanes[call.key] = _Lane()
            lane.pending.append(waiter)
            batch = self._take(lane)
        if batch == [waiter]:
            self._send_alone(lane, waiter)
        elif batch:
            self._start(lane, batch)
        if not waiter.done.wait(max(0.0, deadline - time.monotonic())):
            # Still queued (a full pipeline) or its call is slow: the request gives up, as a
            # call with this deadline would; a call it is part of still answers the others.
            raise DeadlineExceededError(
                f"model server did not answer in time: no answer within {seconds:.3g} s")
        if waiter.send_alone:
            return self.client.send(call, deadline)
        if waiter.error is not None:
            raise waiter.error
        assert waiter.answer is not None
        return waiter.answer

    def _take(self, lane: _Lane) -> list[_Waiter]:
        """Under the lock: the next batch, if a call may start now (requests past their deadline dropped)."""
        if lane.in_flight >= self.max_in_flight:
            return []
        now, batch, images = time.monotonic(), list[_Waiter](), 0
        while lane.pending:
            waiter = lane.pending[0]
            if waiter.deadline <= now:
                lane.pending.popleft()  # its thread has answered 504 or is about to
                continue
            if batch and images + len(waiter.call.images) > self.max_images_per_call:
                break
            batch.append(lane.pending.popleft())
            images += len(waiter.call.images)
        if batch:
            lane.in_flight += 1
        return batch

    def _send_alone(self, lane: _Lane, waiter: _Waiter) -> None:
        """A request that finds no call out makes its call on its own thread, blocking: a future
        would start and stop a gRPC callback thread per lone request. Requests that queue
        meanwhile go when it returns, as behind any call."""
        try:
            answer = self.client.send(_joined([waiter]), waiter.deadline)
        except BaseException as error:  # noqa: BLE001 - the waiter must hear of it, whatever it is
            self._finish(lane, [waiter], error=error)
        else:
            self._finish(lane, [waiter], answer=answer)

    def _start(self, lane: _Lane, batch: list[_Waiter]) -> None:
        try:
            future = self.client.start(_joined(batch), max(w.deadline for w in batch))
        except BaseException as error:  # noqa: BLE001 - every waiter must hear of it, whatever it is
            self._finish(lane, batch, error=error)
            return
        future.add_done_callback(lambda done: self._finish_future(lane, batch, done))

    def _finish_future(self, lane: _Lane, batch: list[_Waiter], future: Future[Answer]) -> None:
        try:
            answer = future.result()
        except BaseException as error:  # noqa: BLE001
            self._finish(lane, batch, error=error)
        else:
            self._finish(lane, batch, answer=answer)

    def _finish(self, lane: _Lane, batch: list[_Waiter], answer: Answer | None = None,
                error: BaseException | None = None) -> None:
        # Runs on gRPC's callback thread or the lone request's: it must wake every waiter.
        try:
            if answer is not None:
                self._split(answer, batch)
            else:
                for waiter in batch:
                    waiter.finish(error=error)
        except BaseException as unexpected:  # noqa: BLE001
            logger.exception("splitting a shared Predict answer failed")
            for waiter in batch:
                if not waiter.done.is_set():
                    waiter.finish(error=unexpected)
        key = batch[0].call.key
        with self._lock:
            lane.in_flight -= 1
            following = self._take(lane)
            if not lane.pending and lane.in_flight == 0 and self._lanes.get(key) is lane:
                del self._lanes[key]  # keys do not pile up as versions come and go
        if following:
            self._start(lane, following)

    def _split(self, answer: Answer, batch: list[_Waiter]) -> None:
        if len(batch) == 1:
            batch[0].finish(answer=answer)  # nothing to split, whatever the outputs' shapes
            return
        total = sum(len(w.call.images) for w in batch)
        if not _one_row_per_image(answer, total):
            self._remember_unsplittable(batch[0].call, answer, total)
            for waiter in batch:
                waiter.finish(send_alone=True)
            return
        start = 0
        for waiter in batch:
            end = start + len(waiter.call.images)
            waiter.finish(answer=Answer(answer.version, {k: a[start:end] for k, a in answer.outputs.items()}))
            start = end

    def _remember_unsplittable(self, call: PredictCall, answer: Answer, total: int) -> None:
        with self._lock:
            first = call.key not in self._unsplittable
            self._unsplittable.add(call.key)
        if first:
            shapes = {key: list(array.shape) for key, array in answer.outputs.items()}
            logger.warning("model '%s' version %s: predictions are not coalesced: outputs %s are not one row "
                           "per image (%d)", call.model, call.version, shapes, total)


def _one_row_per_image(answer: Answer, images: int) -> bool:
    return all(array.ndim > 0 and len(array) == images for array in answer.outputs.values())


def _joined(batch: list[_Waiter]) -> PredictCall:
    """The call of a batch: its requests' images in order, and their request IDs."""
    first = batch[0].call
    images = first.images if len(batch) == 1 else np.concatenate([w.call.images for w in batch])
    request_ids = tuple(request_id for w in batch for request_id in w.call.request_ids)
    return dataclasses.replace(first, images=images, request_ids=request_ids)
