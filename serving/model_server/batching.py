"""Server-side batching: TF Serving's BatchingSession over one shared batch scheduler.

Session runs of one model version with the same feed and fetch names queue together;
batch threads concatenate them along dimension 0, run the session once and split the
outputs back. Semantics and messages follow tensorflow_serving/batching/batching_session.cc
and TF's batching_util/shared_batch_scheduler.h; `read_batching_options` reads the
`--batching_parameters_file` (text BatchingParameters) as TF Serving does.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor

import grpc
import numpy as np
from google.protobuf import text_format
from prometheus_client import REGISTRY, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from serving.config.pixelgate_config_pb2 import BatchingParameters
from serving.model_server.errors import (
    FailedPrecondition,
    Internal,
    InvalidArgument,
    ModelServerError,
    NotFound,
    Unavailable,
)
from serving.model_server.metrics import ExactNameCounter

# The request deadline lives with the REST and gRPC edges' other run options.
from serving.model_server.run_options import current_deadline, in_thread, run_timeout

logger = logging.getLogger(__name__)

Feeds = Sequence[tuple[str, np.ndarray]]
SessionRun = Callable[[Feeds, Sequence[str]], list[np.ndarray]]

# server.cc names the pool when --enable_batching comes without a parameters file.
DEFAULT_THREAD_POOL_NAME = "model_server_batch_threads"
# SharedBatchScheduler::QueueOptions defaults.
DEFAULT_MAX_BATCH_SIZE = 1000
DEFAULT_MAX_ENQUEUED_BATCHES = 10

# TF Serving's own metric names (its Prometheus exporter turns '/' into ':').
_SIZE_BUCKETS = [2.0**power for power in range(14)]
INPUT_BATCH_SIZE = Histogram(
    ":tensorflow:serving:batching_session:input_batch_size",
    "Tracks the batch size distribution on the inputs.",
    buckets=_SIZE_BUCKETS,
)
PROCESSED_BATCH_SIZE = Histogram(
    ":tensorflow:serving:batching_session:processed_batch_size",
    "Tracks the batch size distribution on processing.",
    buckets=_SIZE_BUCKETS,
)
PADDING_SIZE = Histogram(
    ":tensorflow:serving:batching_session:padding_size",
    "Tracks the padding size distribution on batches.",
    ["execution_batch_size"],
    buckets=_SIZE_BUCKETS,
)
QUEUING_LATENCY = Histogram(
    ":tensorflow:serving:batching_session:queuing_latency",
    "Distribution of wall time spent (in microseconds) in queuing",
    ["thread_pool_name"],
    buckets=[100 * 1.2**power for power in range(52)],
)
WRAPPED_RUN_COUNT = ExactNameCounter(
    ":tensorflow:serving:batching_session:wrapped_run_count",
    "Total count of run calls on the wrapped session",
)


class _WrappedRunCountCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        yield WRAPPED_RUN_COUNT.metric()


REGISTRY.register(_WrappedRunCountCollector())


# Parameters ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class BatchingOptions:
    """BatchingParameters with SharedBatchScheduler's defaults filled in, checked as TF checks them."""

    num_batch_threads: int
    thread_pool_name: str = DEFAULT_THREAD_POOL_NAME
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    batch_timeout_micros: int = 0
    max_enqueued_batches: int = DEFAULT_MAX_ENQUEUED_BATCHES
    enable_large_batch_splitting: bool = False
    max_execution_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    allowed_batch_sizes: tuple[int, ...] = ()
    pad_variable_length_inputs: bool = False

    @classmethod
    def from_parameters(cls, parameters: BatchingParameters, cpu_count: int) -> BatchingOptions:
        def value(field: str, default: object) -> object:
            return getattr(parameters, field).value if parameters.HasField(field) else default

        max_batch_size = int(value("max_batch_size", DEFAULT_MAX_BATCH_SIZE))  # type: ignore[call-overload]
        splitting = bool(value("enable_large_batch_splitting", False))
        options = cls(
            num_batch_threads=int(value("num_batch_threads", cpu_count)),  # type: ignore[call-overload]
            thread_pool_name=str(value("thread_pool_name", "batch_threads")),
            max_batch_size=max_batch_size,
            batch_timeout_micros=int(value("batch_timeout_micros", 0)),  # type: ignore[call-overload]
            max_enqueued_batches=int(
                value("max_enqueued_batches", DEFAULT_MAX_ENQUEUED_BATCHES)  # type: ignore[call-overload]
            ),
            enable_large_batch_splitting=splitting,
            max_execution_batch_size=int(
                value("max_execution_batch_size", max_batch_size) if splitting else max_batch_size  # type: ignore[call-overload]
            ),
            allowed_batch_sizes=tuple(parameters.allowed_batch_sizes),
            pad_variable_length_inputs=parameters.pad_variable_length_inputs,
        )
        options.validate()
        if not splitting and options.max_enqueued_batches == 0:
            # SharedBatchScheduler::AddQueue keeps old configs working by reading 0 as 1.
            options = dataclasses.replace(options, max_enqueued_batches=1)
        return options

    def validate(self) -> None:
        """TF's checks (SharedBatchScheduler::Create/AddQueue, CreateBatchingSession), its messages."""
        if self.num_batch_threads < 1:
            raise InvalidArgument(f"num_batch_threads must be positive; was {self.num_batch_threads}")
        sizes = self.allowed_batch_sizes
        # WrapSessionForBatching (bundle_factory_util.cc) checks this first, whether or not large
        # batches are split; with splitting, the checks below then also want max_execution_batch_size.
        if sizes and sizes[-1] != self.max_batch_size:
            raise InvalidArgument(
                "Last entry in allowed_batch_sizes must match max_batch_size; "
                f"last entry was {sizes[-1]}; expected {self.max_batch_size}"
            )
        if self.max_batch_size <= 0:
            raise InvalidArgument(f"input_batch_size_limit must be positive; was {self.max_batch_size}")
        if self.batch_timeout_micros < 0:
            raise InvalidArgument(
                f"batch_timeout_micros must be non-negative; was {self.batch_timeout_micros}"
            )
        if self.max_enqueued_batches < 0 or (
            self.enable_large_batch_splitting and self.max_enqueued_batches == 0
        ):
            raise InvalidArgument(f"max_enqueued_batches must be positive; was {self.max_enqueued_batches}")
        if self.enable_large_batch_splitting and self.max_batch_size < self.max_execution_batch_size:
            raise InvalidArgument(
                "When enable_large_batch_splitting is true, input_batch_size_limit must be greater than "
                "or equal to max_execution_batch_size."
            )
        if not sizes:
            return
        # The documented requirement; TF itself checks the order only when splitting.
        if any(later <= earlier for earlier, later in zip(sizes, sizes[1:], strict=False)):
            raise InvalidArgument("allowed_batch_sizes entries must be monotonically increasing")
        if self.enable_large_batch_splitting and sizes[-1] != self.max_execution_batch_size:
            raise InvalidArgument(
                "Last entry in allowed_batch_sizes must be equal to max_execution_batch_size; "
                f"last entry was {sizes[-1]}; expected {self.max_execution_batch_size}"
            )

    def execution_size(self, batch_size: int) -> int:
        """The batch size a batch of `batch_size` rows runs with: the next allowed size."""
        for allowed in self.allowed_batch_sizes:
            if allowed >= batch_size:
                return allowed
        return batch_size


# What --enable_per_model_batching_parameters reads from a version directory (bundle_factory_util.cc).
PER_MODEL_BATCHING_PARAMS_FILENAME = "batching_params.pbtxt"


def read_batching_parameters(path: str) -> BatchingParameters:
    """Parse a text BatchingParameters file; an unknown or misspelt field is an error, as in TF Serving."""
    try:
        with open(path, encoding="utf-8") as text:
            content = text.read()
    except FileNotFoundError as error:
        raise NotFound(f"{path}; No such file or directory") from error
    except OSError as error:
        raise InvalidArgument(f"{path}; {error.strerror}") from error
    try:
        return text_format.Parse(content, BatchingParameters())
    except text_format.ParseError as error:
        logger.error("Error parsing text-format pixelgate.serving.BatchingParameters: %s", error)
        raise InvalidArgument(f"Invalid protobuf file: '{path}'") from error


def read_model_batching_options(version_dir: str, server_options: BatchingOptions) -> BatchingOptions | None:
    """--enable_per_model_batching_parameters: the version's own `batching_params.pbtxt`, or None.

    As TF Serving's GetPerModelBatchingParams: the file's batch sizes, timeout and queue bound
    replace the server's; the threads stay the server's (one pool for every model). A version
    without the file is served without batching.
    """
    path = os.path.join(version_dir, PER_MODEL_BATCHING_PARAMS_FILENAME)
    if not os.path.exists(path):
        return None
    parameters = read_batching_parameters(path)
    parameters.ClearField("num_batch_threads")  # TF Serving ignores the file's thread settings
    parameters.ClearField("thread_pool_name")
    options = BatchingOptions.from_parameters(parameters, server_options.num_batch_threads)
    return dataclasses.replace(options, thread_pool_name=server_options.thread_pool_name)


def read_batching_options(path: str, cpu_count: int) -> BatchingOptions:
    """The options --enable_batching runs with: from `path`, or TF Serving's defaults when empty."""
    if not path:
        return BatchingOptions.from_parameters(
            BatchingParameters(thread_pool_name={"value": DEFAULT_THREAD_POOL_NAME}), cpu_count
        )
    return BatchingOptions.from_parameters(read_batching_parameters(path), cpu_count)


# Tasks and queues ----------------------------------------------------------------------


class _Task:
    """One session run waiting for its batch; or one piece of a run split across batches."""

    def __init__(
        self,
        feeds: dict[str, np.ndarray],
        fetches: tuple[str, ...],
        size: int,
        deadline: float | None,
        parent: _Task | None = None,
        done: threading.Event | LoopEvent | None = None,
    ) -> None:
        self.feeds = feeds
        self.fetches = fetches
        self.size = size
        self.deadline = deadline
        self.enqueued = time.monotonic()
        self.outputs: list[np.ndarray] | None = None
        self.error: ModelServerError | None = None
        self.done = threading.Event() if done is None else done
        self.parent = parent
        self.parts: list[_Task] = []
        self._parts_pending = 0
        self._parts_lock = threading.Lock()

    def split(self, sizes: Sequence[int]) -> list[_Task]:
        """Pieces of `sizes` rows each (tensor views, no copies); the task ends when all have."""
        start = 0
        for size in sizes:
            feeds = {name: array[start : start + size] for name, array in self.feeds.items()}
            self.parts.append(_Task(feeds, self.fetches, size, self.deadline, parent=self))
            start += size
        self._parts_pending = len(self.parts)
        return self.parts

    def finish(self, error: ModelServerError | None = None) -> None:
        if error is not None:
            self.error = error
        if self.parent is None:
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
    tasks: list[_Task] = dataclasses.field(default_factory=list)
    size: int = 0


class _BatchQueue:
    """One kind of run's batches: all closed but the last, the open one (TF's internal::Queue).

    Every method is called with the scheduler's lock held.
    """

    def __init__(self, options: BatchingOptions, process: Callable[[list[_Task]], None]) -> None:
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

    def add(self, task: _Task) -> None:
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
        self._queues: list[_BatchQueue] = []
        self._next_queue = 0
        self._stopping = False
        self._threads = [
            threading.Thread(target=self._work, name=f"{options.thread_pool_name}_{index}", daemon=True)
            for index in range(options.num_batch_threads)
        ]
        for thread in self._threads:
            thread.start()

    def add_queue(
        self, process: Callable[[list[_Task]], None], options: BatchingOptions | None = None
    ) -> _BatchQueue:
        """A queue with `options`' batch sizes and timeout (default: the scheduler's)."""
        queue = _BatchQueue(self.options if options is None else options, process)
        with self._condition:
            self._queues.append(queue)
        return queue

    def schedule(self, queue: _BatchQueue, task: _Task) -> None:
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

    def remove_queue(self, queue: _BatchQueue) -> None:
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

    def _next_batch(self) -> tuple[_BatchQueue, _Batch] | None:
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


# The batching session ------------------------------------------------------------------


class BatchingSession:
    """A model version's session run with batching underneath; `run` blocks until its batch ran."""

    def __init__(
        self,
        scheduler: BatchScheduler,
        run_unbatched: SessionRun,
        name: str = "",
        options: BatchingOptions | None = None,
    ) -> None:
        """`options`: this model's own batch sizes and timeout (batching_params.pbtxt), else the server's."""
        self._scheduler = scheduler
        self._options = scheduler.options if options is None else options
        self._run_unbatched = run_unbatched
        self._name = name
        self._queues: dict[tuple[frozenset[str], frozenset[str]], _BatchQueue] = {}
        self._lock = threading.Lock()

    def run(self, feeds: Feeds, fetches: Sequence[str]) -> list[np.ndarray]:
        size = self._input_size(feeds)
        if size == 0:  # nothing to batch: padding would need a row to copy
            return self._run_unbatched(feeds, fetches)
        task = self._schedule(feeds, fetches, size, threading.Event())
        task.done.wait()  # type: ignore[union-attr]
        return self._result(task)

    async def run_async(
        self, feeds: Feeds, fetches: Sequence[str], executor: Executor | None = None
    ) -> list[np.ndarray]:
        """`run` for a caller on an event loop: it awaits its batch instead of blocking a thread."""
        size = self._input_size(feeds)
        if size == 0:
            return await in_thread(executor, self._run_unbatched, feeds, fetches)
        done = LoopEvent(asyncio.get_running_loop())
        task = self._schedule(feeds, fetches, size, done)
        await done.future
        return self._result(task)

    @staticmethod
    def _input_size(feeds: Feeds) -> int:
        size = _batch_size(feeds)
        for _ in feeds:
            INPUT_BATCH_SIZE.observe(size)
        return size

    def _schedule(
        self, feeds: Feeds, fetches: Sequence[str], size: int, done: threading.Event | LoopEvent
    ) -> _Task:
        task = _Task(dict(feeds), tuple(fetches), size, current_deadline(), done=done)
        self._scheduler.schedule(self._queue(task), task)
        return task

    @staticmethod
    def _result(task: _Task) -> list[np.ndarray]:
        if task.error is not None:
            raise task.error
        return task.outputs  # type: ignore[return-value]

    def close(self) -> None:
        """Run what is queued and give the queues back to the scheduler."""
        with self._lock:
            queues = list(self._queues.values())
            self._queues.clear()
        for queue in queues:
            self._scheduler.remove_queue(queue)

    def _queue(self, task: _Task) -> _BatchQueue:
        # One queue per TensorSignature (feed names, fetch names), created on first use.
        key = (frozenset(task.feeds), frozenset(task.fetches))
        with self._lock:
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = self._scheduler.add_queue(
                    lambda tasks: self._process_batch(key, tasks), self._options
                )
            return queue

    def _process_batch(self, key: tuple[frozenset[str], frozenset[str]], tasks: list[_Task]) -> None:
        """Merge, run once, split; every task ends, whatever happens (TF's ProcessBatch)."""
        error: ModelServerError | None = None
        try:
            self._check_deadlines(tasks)
            feeds, rows, execution_size = self._merge_inputs(sorted(key[0]), tasks)
            fetches = sorted(key[1])
            # The batch runs until its last task's deadline, as BatchingSession::ProcessBatch does.
            deadlines = [task.deadline for task in tasks]
            seconds = None if None in deadlines else max(deadlines) - time.monotonic()  # type: ignore[type-var]
            with run_timeout(seconds):
                outputs = self._run_unbatched(feeds, fetches)
            WRAPPED_RUN_COUNT.increment()
            self._split_outputs(fetches, outputs, tasks, execution_size)
            logger.debug(
                "%s: ran %d request(s), %d row(s) as a batch of %d",
                self._name,
                len(tasks),
                rows,
                execution_size,
            )
        except ModelServerError as batch_error:
            error = batch_error
        except Exception as batch_error:  # never leave a caller waiting
            logger.exception("Batch of %s failed", self._name)
            error = Internal(f"{type(batch_error).__name__}: {batch_error}")
        finally:
            for task in tasks:
                task.finish(error)

    def _check_deadlines(self, tasks: list[_Task]) -> None:
        now = time.monotonic()
        queuing_latency = QUEUING_LATENCY.labels(self._options.thread_pool_name)
        for task in tasks:
            queuing_latency.observe((now - task.enqueued) * 1e6)
        if all(task.deadline is not None and task.deadline <= now for task in tasks):
            raise ModelServerError(
                "Run() timeout exceeded while waiting in batching queue", grpc.StatusCode.RESOURCE_EXHAUSTED
            )

    def _merge_inputs(
        self, names: list[str], tasks: list[_Task]
    ) -> tuple[list[tuple[str, np.ndarray]], int, int]:
        rows = sum(task.size for task in tasks)
        execution_size = self._options.execution_size(rows)
        padding = execution_size - rows
        PROCESSED_BATCH_SIZE.observe(execution_size)
        PADDING_SIZE.labels(str(execution_size)).observe(padding)
        merged = []
        for name in names:
            arrays = [task.feeds[name] for task in tasks]
            if self._options.pad_variable_length_inputs:
                arrays = _pad_to_common_shape(arrays)
            elif any(array.shape[1:] != arrays[0].shape[1:] for array in arrays):
                raise FailedPrecondition(
                    f"Tensors with name '{name}' from different tasks have different shapes and padding is "
                    "turned off. Set pad_variable_length_inputs to true, or ensure that all tensors with "
                    "the same name have equal dimensions starting with the first dim."
                )
            if any(array.dtype != arrays[0].dtype for array in arrays):
                raise Internal(f"Tensor concat operation failed: tensors named '{name}' differ in type")
            if padding:
                # Copies of the last task's first row: a row known to be a valid input.
                arrays.append(np.repeat(arrays[-1][:1], padding, axis=0))
            merged.append((name, arrays[0] if len(arrays) == 1 else np.concatenate(arrays)))
        return merged, rows, execution_size

    @staticmethod
    def _split_outputs(
        fetches: list[str], outputs: list[np.ndarray], tasks: list[_Task], execution_size: int
    ) -> None:
        by_name = {}
        for name, value in zip(fetches, outputs, strict=True):
            value = np.asarray(value)
            if value.ndim == 0:
                raise FailedPrecondition("Batched output tensor has 0 dimensions")
            if value.shape[0] != execution_size:
                raise FailedPrecondition(
                    "Batched output tensor's 0th dimension does not equal the sum of the 0th dimension "
                    "sizes of the input tensors"
                )
            by_name[name] = value
        start = 0
        for task in tasks:
            task.outputs = [by_name[name][start : start + task.size] for name in task.fetches]
            start += task.size


def _batch_size(feeds: Feeds) -> int:
    """The common dimension 0 of every feed (TF Serving's ComputeTensorBatchSize)."""
    if not feeds:
        raise InvalidArgument("Batching Run() must have at least one input tensor")
    sizes = set()
    for _, array in feeds:
        if np.ndim(array) == 0:
            raise InvalidArgument("Batching Run() input tensors must have at least one dimension")
        sizes.add(np.shape(array)[0])
    if len(sizes) > 1:
        raise InvalidArgument("Batching Run() input tensors must have equal 0th-dimension size")
    return int(sizes.pop())


def _pad_to_common_shape(arrays: list[np.ndarray]) -> list[np.ndarray]:
    """Pad every array at the end of each dimension but 0 to the largest shape, with its first value."""
    if len({array.ndim for array in arrays}) > 1:
        raise FailedPrecondition("Tensors to pad for batching differ in rank")
    target = np.max([array.shape for array in arrays], axis=0)
    padded = []
    for array in arrays:
        widths = [(0, 0)] + [
            (0, int(want - have)) for want, have in zip(target[1:], array.shape[1:], strict=True)
        ]
        if any(after for _, after in widths):
            if array.size == 0:
                raise InvalidArgument("Got empty tensor in batch of non-empty tensors.")
            array = np.pad(array, widths, constant_values=array.reshape(-1)[0])
        padded.append(array)
    return padded
