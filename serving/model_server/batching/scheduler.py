"""TF's SharedBatchScheduler: tasks queue per kind of run, batch threads take whole batches.

Each queue keeps its closed batches and one open batch; a batch closes when full or when
its timeout passes, and `num_batch_threads` threads serve every queue in turn. Semantics and
messages follow TF's batching_util/shared_batch_scheduler.h.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import threading
import time
from collections.abc import Callable, Sequence

import numpy as np

from serving.model_server.batching.parameters import BatchingOptions
from serving.model_server.errors import InvalidArgument, ModelServerError, Unavailable


class Task:
    """One session run waiting for its batch; or one piece of a run split across batches."""

    def __init__(
        self,
        feeds: dict[str, np.ndarray],
        fetches: tuple[str, ...],
        size: int,
        deadline: float | None,
        done: LoopEvent | None = None,
        parent: Task | None = None,
    ) -> None:
        """`done` is set once the outputs or the error are in; pieces of a split task have none."""
        self.feeds = feeds
        self.fetches = fetches
        self.size = size
        self.deadline = deadline
        self.enqueued = time.monotonic()
        self.outputs: list[np.ndarray] | None = None
        self.error: ModelServerError | None = None
        self.done = done
        self.parent = parent
        self.parts: list[Task] = []
        self._parts_pending = 0
        self._parts_lock = threading.Lock()

    def split(self, sizes: Sequence[int]) -> list[Task]:
        """Pieces of `sizes` rows each (tensor views, no copies); the task ends when all have."""
        start = 0
        for size in sizes:
            feeds = {name: array[start : start + size] for name, array in self.feeds.items()}
            self.parts.append(Task(feeds, self.fetches, size, self.deadline, parent=self))
            start += size
        self._parts_pending = len(self.parts)
        return self.parts

    def finish(self, error: ModelServerError | None = None) -> None:
        if error is not None:
            self.error = error
        if self.parent is None:
            if self.done is not None:
                self.done.set()
            return
        parent = self.parent
        with parent._parts_lock:
            parent._parts_pending -= 1
            if parent._parts_pending:
                return
        errors = [part.error for part in parent.parts if part.error is not None]
        if errors:
            parent.error = errors[0]
        else:
            # Pieces come back in order; rejoin each output along dimension 0.
            parent.outputs = [
                np.concatenate([part.outputs[index] for part in parent.parts])  # type: ignore[index]
                for index in range(len(parent.fetches))
            ]
        if parent.done is not None:
            parent.done.set()


class LoopEvent:
    """`threading.Event.set()` for a caller awaiting on an event loop: one loop wake-up, no thread.

    `set` comes from a batch thread; the waiting coroutine may have gone (its call was
    cancelled) and the loop may have closed (server stopped): neither is an error here.
    """

    __slots__ = ("_loop", "future")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.future: asyncio.Future[None] = loop.create_future()

    def set(self) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
            self._loop.call_soon_threadsafe(self._resolve)

    def _resolve(self) -> None:
        if not self.future.done():
            self.future.set_result(None)


@dataclasses.dataclass
class _Batch:
    tasks: list[Task] = dataclasses.field(default_factory=list)
    size: int = 0


class BatchQueue:
    """One kind of run's batches: all closed but the last, the open one (TF's internal::Queue).

    Every method is called with the scheduler's lock held.
    """

    def __init__(self, options: BatchingOptions, process: Callable[[list[Task]], None]) -> None:
        self.options = options
        self.process = process
        self.batches: collections.deque[_Batch] = collections.deque([_Batch()])
        self.open_started = 0.0
        self.in_process = 0
        self.closed = False

    @property
    def execution_limit(self) -> int:
        options = self.options
        return (
            options.max_execution_batch_size
            if options.enable_large_batch_splitting
            else options.max_batch_size
        )

    def add(self, task: Task) -> None:
        """Queue `task` (split if allowed and needed); InvalidArgument/Unavailable as TF's Schedule()."""
        options, limit = self.options, self.execution_limit
        if task.size > options.max_batch_size:
            raise InvalidArgument(
                f"Task size {task.size} is larger than maximum input batch size {options.max_batch_size}"
            )
        open_size = self.batches[-1].size
        if options.enable_large_batch_splitting:
            capacity = (options.max_enqueued_batches - len(self.batches)) * limit + limit - open_size
            if task.size > capacity:
                raise Unavailable(
                    "The batch scheduling queue to which this task was submitted is full; task size is "
                    f"{task.size} but scheduling capacity is only {capacity} (num_enqueued_batches="
                    f"{len(self.batches)}, max_enqueued_batches={options.max_enqueued_batches}, "
                    f"open_batch_size={open_size}, max_execution_batch_size={limit})"
                )
            pieces = [task]
            if task.size > limit - open_size:
                sizes = [limit - open_size] if open_size < limit else []
                remaining = task.size - sum(sizes)
                sizes += [min(limit, remaining - start) for start in range(0, remaining, limit)]
                pieces = task.split(sizes)
        else:
            if open_size + task.size > limit and len(self.batches) >= options.max_enqueued_batches:
                raise Unavailable(
                    "The batch scheduling queue to which this task was submitted is full; currently "
                    f"{len(self.batches)} batches enqueued and max_enqueued_batches is "
                    f"{options.max_enqueued_batches}"
                )
            pieces = [task]
        for piece in pieces:
            if self.batches[-1].size + piece.size > limit:
                self.batches.append(_Batch())
            batch = self.batches[-1]
            if not batch.tasks:
                self.open_started = time.monotonic()
            batch.tasks.append(piece)
            batch.size += piece.size

    def open_batch_deadline(self) -> float | None:
        """When the open batch may be taken as it is; None when it is empty."""
        batch = self.batches[-1]
        if not batch.tasks:
            return None
        if self.closed or batch.size >= self.execution_limit:
            return 0.0
        return self.open_started + self.options.batch_timeout_micros / 1e6

    def take_batch(self, now: float) -> _Batch | None:
        """A closed batch for a free thread, closing the open one if it is due (TF's ScheduleBatch)."""
        if len(self.batches) == 1:
            deadline = self.open_batch_deadline()
            if deadline is None or now < deadline:
                return None
            self.batches.append(_Batch())
        self.in_process += 1
        return self.batches.popleft()

    def is_empty(self) -> bool:
        return self.in_process == 0 and len(self.batches) == 1 and not self.batches[0].tasks


class BatchScheduler:
    """TF's SharedBatchScheduler: `num_batch_threads` threads serving every queue in turn."""

    def __init__(self, options: BatchingOptions) -> None:
        self.options = options
        self._condition = threading.Condition()
        self._queues: list[BatchQueue] = []
        self._next_queue = 0
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{options.thread_pool_name}_{index}", daemon=True)
            for index in range(options.num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()

    def add_queue(
        self, process: Callable[[list[Task]], None], options: BatchingOptions | None = None
    ) -> BatchQueue:
        """A queue with `options`' batch sizes and timeout (default: the scheduler's)."""
        queue = BatchQueue(self.options if options is None else options, process)
        with self._condition:
            self._queues.append(queue)
        return queue

    def schedule(self, queue: BatchQueue, task: Task) -> None:
        with self._condition:
            if queue.closed or self._stopping:
                raise Unavailable("The batch scheduling queue to which this task was submitted is closed")
            batches, open_size = len(queue.batches), queue.batches[-1].size
            queue.add(task)
            # Wake free threads, one per batch, when there is news for them: a batch closed or
            # filled (take it now), or a batch opened (sleep until it is due). A task joining
            # a batch that is already open changes nothing for a thread timing that batch, and
            # waking it for each one cost the server a thread switch per request.
            if len(queue.batches) != batches or open_size == 0 or queue.open_batch_deadline() == 0.0:
                self._condition.notify(len(queue.batches))

    def remove_queue(self, queue: BatchQueue) -> None:
        """Run what the queue still holds, then drop it (TF's QueueHandle destructor)."""
        with self._condition:
            queue.closed = True
            self._condition.notify_all()
            self._condition.wait_for(queue.is_empty)
            index = self._queues.index(queue)
            del self._queues[index]
            if self._next_queue > index:
                self._next_queue -= 1

    def stop(self) -> None:
        """Run what is queued, then end the batch threads."""
        with self._condition:
            queues = list(self._queues)
        for queue in queues:
            self.remove_queue(queue)
        with self._condition:
            self._stopping = True
            self._condition.notify_all()
        for thread in self._threads:
            thread.join()

    def _work(self) -> None:
        while True:
            with self._condition:
                work = self._next_batch()
                while work is None:
                    if self._stopping:
                        return
                    self._condition.wait(self._time_to_next_due_batch())
                    work = self._next_batch()
            queue, batch = work
            try:
                queue.process(batch.tasks)
            finally:
                with self._condition:
                    queue.in_process -= 1
                    if queue.closed and queue.is_empty():
                        self._condition.notify_all()

    def _next_batch(self) -> tuple[BatchQueue, _Batch] | None:
        """Round robin over the queues, as SharedBatchScheduler's threads do."""
        now = time.monotonic()
        for _ in range(len(self._queues)):
            self._next_queue %= len(self._queues)
            queue = self._queues[self._next_queue]
            self._next_queue += 1
            batch = queue.take_batch(now)
            if batch is not None:
                return queue, batch
        return None

    def _time_to_next_due_batch(self) -> float | None:
        deadlines = [d for q in self._queues if (d := q.open_batch_deadline()) is not None]
        return max(min(deadlines) - time.monotonic(), 0.0) if deadlines else None

