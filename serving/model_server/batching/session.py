"""TF Serving's BatchingSession: a model version's session runs, merged into batches and split back.

Runs with the same feed and fetch names share a queue of the shared `BatchScheduler`; a
batch thread concatenates their inputs along dimension 0 (padding to an allowed batch size
or a common shape where configured), runs the session once and hands each caller its rows.
Semantics and messages follow tensorflow_serving/batching/batching_session.cc.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor

import grpc
import numpy as np
from prometheus_client import REGISTRY, Histogram
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from serving.model_server.batching.parameters import BatchingOptions
from serving.model_server.batching.scheduler import BatchQueue, BatchScheduler, LoopEvent, Task
from serving.model_server.errors import FailedPrecondition, Internal, InvalidArgument, ModelServerError
from serving.model_server.metrics import ExactNameCounter
from serving.model_server.run_options import current_deadline, in_thread, run_timeout

logger = logging.getLogger(__name__)

Feeds = Sequence[tuple[str, np.ndarray]]
SessionRun = Callable[[Feeds, Sequence[str]], list[np.ndarray]]

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

class BatchingSession:
    """A model version's session run with batching underneath; `run` returns once its batch ran."""

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
        self._queues: dict[tuple[frozenset[str], frozenset[str]], BatchQueue] = {}
        self._lock = threading.Lock()

    async def run(
        self, feeds: Feeds, fetches: Sequence[str], executor: Executor | None = None
    ) -> list[np.ndarray]:
        """Wait for the batch this run joins, without holding a thread; an empty run goes to `executor`."""
        size = self._input_size(feeds)
        if size == 0:  # nothing to batch: padding would need a row to copy
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

    def _schedule(self, feeds: Feeds, fetches: Sequence[str], size: int, done: LoopEvent) -> Task:
        task = Task(dict(feeds), tuple(fetches), size, current_deadline(), done=done)
        self._scheduler.schedule(self._queue(task), task)
        return task

    @staticmethod
    def _result(task: Task) -> list[np.ndarray]:
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

    def _queue(self, task: Task) -> BatchQueue:
        # One queue per TensorSignature (feed names, fetch names), created on first use.
        key = (frozenset(task.feeds), frozenset(task.fetches))
        with self._lock:
            queue = self._queues.get(key)
            if queue is None:
                queue = self._queues[key] = self._scheduler.add_queue(
                    lambda tasks: self._process_batch(key, tasks), self._options
                )
            return queue

    def _process_batch(self, key: tuple[frozenset[str], frozenset[str]], tasks: list[Task]) -> None:
        """Merge, run once, split; every task ends, whatever happens (TF's ProcessBatch)."""
        error: ModelServerError | None = None
        try:
            self._check_deadlines(tasks)
            feeds, rows, execution_size = self._merge_inputs(sorted(key[0]), tasks)
            fetches = sorted(key[1])
            # The batch runs until its last task's deadline, as BatchingSession::ProcessBatch does.
            deadlines = [task.deadline for task in tasks if task.deadline is not None]
            seconds = max(deadlines) - time.monotonic() if len(deadlines) == len(tasks) else None
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

    def _check_deadlines(self, tasks: list[Task]) -> None:
        now = time.monotonic()
        queuing_latency = QUEUING_LATENCY.labels(self._options.thread_pool_name)
        for task in tasks:
            queuing_latency.observe((now - task.enqueued) * 1e6)
        if all(task.deadline is not None and task.deadline <= now for task in tasks):
            raise ModelServerError(
                "Run() timeout exceeded while waiting in batching queue", grpc.StatusCode.RESOURCE_EXHAUSTED
            )

    def _merge_inputs(
        self, names: list[str], tasks: list[Task]
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
        fetches: list[str], outputs: list[np.ndarray], tasks: list[Task], execution_size: int
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
