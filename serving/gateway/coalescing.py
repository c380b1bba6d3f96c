"""Concurrent predictions for the same model version share one Predict call to the model server.

Group commit: while `max_in_flight` calls for a key are out, new requests queue; each call that
returns sends whatever has queued as one batch. A lone request goes at once (no timer, no added
latency); under load, batches grow with the concurrency and the per-call cost is paid once per batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any

import grpc
import numpy as np

logger = logging.getLogger(__name__)

# What a finished call answers: (served version, {output key: array with one row per image}).
Answer = tuple[int, dict[str, np.ndarray]]
# One shared call: (the concatenated inputs, the request IDs, the timeout in seconds) -> a gRPC future.
StartCall = Callable[[np.ndarray, list[str], float], grpc.Future]
# The future's result -> the Answer.
ReadAnswer = Callable[[Any], Answer]
# The same call made blocking: (inputs, request IDs, timeout) -> what the future's result would be;
# raises the call's grpc.RpcError.
Call = Callable[[np.ndarray, list[str], float], Any]


class CoalescingError(Exception):
    """The shared call's answer cannot be split by image (an output without a leading batch dimension)."""


@dataclass(eq=False)
class _Waiter:
    images: np.ndarray
    deadline: float  # time.monotonic()
    request_id: str
    done: threading.Event = field(default_factory=threading.Event)
    answer: Answer | None = None
    error: BaseException | None = None

    def finish(self, answer: Answer | None = None, error: BaseException | None = None) -> None:
        self.answer, self.error = answer, error
        self.done.set()


@dataclass(eq=False)
class _Lane:
    """The queue and the calls in flight of one key: (model, version, input key, outputs, image shape, dtype)."""

    pending: deque[_Waiter] = field(default_factory=deque)
    in_flight: int = 0


class Coalescer:
    """Runs `submit`s for the same key as shared calls; thread-safe, one per process."""

    def __init__(self, max_images: int = 32, max_in_flight: int = 1):
        if max_images < 1 or max_in_flight < 1:
            raise ValueError("max_images and max_in_flight must be at least 1")
        self.max_images = max_images
        self.max_in_flight = max_in_flight
        self._lanes: dict[Hashable, _Lane] = {}
        self._lock = threading.Lock()

    def submit(self, key: Hashable, images: np.ndarray, timeout: float, start_call: StartCall,
               read: ReadAnswer, request_id: str = "", call: Call | None = None) -> Answer:
        """This request's rows of a shared call's answer; raises the call's grpc.RpcError, or
        grpc.RpcError-like `DeadlineExceeded` when `timeout` passes first.

        `call`, if given, is used for a request that finds no call in flight and goes alone: it
        makes its call itself, blocking (see `_call_alone`)."""
        waiter = _Waiter(images, time.monotonic() + timeout, request_id)
        with self._lock:
            lane = self._lanes.get(key)
            if lane is None:
                lane = self._lanes[key] = _Lane()
            lane.pending.append(waiter)
            batch = self._take(lane)
        if batch == [waiter] and call is not None:
            self._call_alone(key, lane, waiter, call, start_call, read)
        elif batch:
            self._start(key, lane, batch, start_call, read)
        if not waiter.done.wait(max(0.0, waiter.deadline - time.monotonic())):
            # Still queued (a full pipeline) or its call is slow: the request gives up, as a
            # call with this deadline would; a call it is part of still answers the others.
            raise DeadlineExceeded(f"no answer within {timeout:g} s")
        if waiter.error is not None:
            raise waiter.error
        assert waiter.answer is not None
        return waiter.answer

    def _take(self, lane: _Lane) -> list[_Waiter]:
        """Under the lock: the next batch, if a call may start now (requests already past their deadline dropped)."""
        if lane.in_flight >= self.max_in_flight:
            return []
        now, batch, images = time.monotonic(), [], 0
        while lane.pending:
            waiter = lane.pending[0]
            if waiter.deadline <= now:
                lane.pending.popleft()  # its thread has answered 504 or is about to
                continue
            if batch and images + len(waiter.images) > self.max_images:
                break
            batch.append(lane.pending.popleft())
            images += len(waiter.images)
        if batch:
            lane.in_flight += 1
        return batch

    def _start(self, key: Hashable, lane: _Lane, batch: list[_Waiter], start_call: StartCall,
               read: ReadAnswer) -> None:
        try:
            future = start_call(*_call_arguments(batch))
        except BaseException as error:  # noqa: BLE001 - every waiter must hear of it, whatever it is
            self._finish(key, lane, batch, start_call, read, error=error)
            return
        future.add_done_callback(lambda done: self._finish(key, lane, batch, start_call, read, future=done))

    def _call_alone(self, key: Hashable, lane: _Lane, waiter: _Waiter, call: Call, start_call: StartCall,
                    read: ReadAnswer) -> None:
        """A request with no call in flight before it makes its call on its own thread, blocking.

        grpcio runs futures' callbacks on a thread of the channel's that it starts when a call
        begins with none in flight, and that ends with the last one: as a future, every lone
        request (one client, or a quiet moment) started and ended a thread, about 0.3 ms of CPU per
        request (docs/benchmarks.md). Under load a call is in flight when the next one starts, that
        thread lives on, and shared calls go as futures. The call's deadline is the request's own.
        Requests that queue meanwhile go when it returns, as behind any call.
        """
        try:
            response = call(*_call_arguments([waiter]))
        except BaseException as error:  # noqa: BLE001 - the waiter must hear of it, whatever it is
            self._finish(key, lane, [waiter], start_call, read, error=error)
        else:
            self._finish(key, lane, [waiter], start_call, read, response=response)

    def _finish(self, key: Hashable, lane: _Lane, batch: list[_Waiter], start_call: StartCall, read: ReadAnswer,
                future: grpc.Future | None = None, error: BaseException | None = None,
                response: Any = None) -> None:
        # Runs on gRPC's callback thread (a future's) or the caller's (`response`, a blocking call's
        # result): it must wake every waiter whatever happens.
        try:
            if error is None and future is not None:
                # A call cancelled under us (the channel closing) has no exception to read.
                error = grpc.FutureCancelledError() if future.cancelled() else future.exception()
            if error is None:
                _split(read(response if future is None else future.result()), batch)
            else:
                for waiter in batch:
                    waiter.finish(error=error)
        except CoalescingError as unsplittable:  # expected of some models: the caller goes per request
            for waiter in batch:
                waiter.finish(error=unsplittable)
        except BaseException as unexpected:  # noqa: BLE001
            logger.exception("splitting a shared Predict answer failed")
            for waiter in batch:
                if not waiter.done.is_set():
                    waiter.finish(error=unexpected)
        with self._lock:
            lane.in_flight -= 1
            following = self._take(lane)
            if not lane.pending and lane.in_flight == 0 and self._lanes.get(key) is lane:
                del self._lanes[key]  # keys do not pile up as versions come and go
        if following:
            self._start(key, lane, following, start_call, read)


def _call_arguments(batch: list[_Waiter]) -> tuple[np.ndarray, list[str], float]:
    """A call's inputs, its requests' IDs, and its timeout: until the last of their deadlines."""
    images = batch[0].images if len(batch) == 1 else np.concatenate([w.images for w in batch])
    timeout = max(w.deadline for w in batch) - time.monotonic()
    return images, [w.request_id for w in batch if w.request_id], max(timeout, 0.001)


def _split(answer: Answer, batch: list[_Waiter]) -> None:
    version, outputs = answer
    if len(batch) == 1:
        batch[0].finish(answer=answer)  # nothing to split, whatever the outputs' shapes
        return
    total = sum(len(w.images) for w in batch)
    for name, array in outputs.items():
        if array.ndim == 0 or array.shape[0] != total:
            raise CoalescingError(f"output '{name}' has shape {list(array.shape)}, not one row per image ({total})")
    start = 0
    for waiter in batch:
        end = start + len(waiter.images)
        waiter.finish(answer=(version, {name: array[start:end] for name, array in outputs.items()}))
        start = end


class DeadlineExceeded(grpc.RpcError):
    """A request's own deadline passed while it waited for a shared call."""

    def __init__(self, details: str):
        super().__init__(details)
        self._details = details

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.DEADLINE_EXCEEDED

    def details(self) -> str:
        return self._details
