"""The `--batching_parameters_file` and its checks: TF Serving's BatchingParameters as options.

Defaults and messages follow TF's batching_util/shared_batch_scheduler.h and TF Serving's
bundle_factory_util.cc, which reads the file (and, per model, `batching_params.pbtxt`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from serving.config.pixelgate_config_pb2 import BatchingParameters
from serving.model_server.errors import InvalidArgument, NotFound
from serving.model_server.text_proto import parse_text_proto

# server.cc names the pool when --enable_batching comes without a parameters file.
DEFAULT_THREAD_POOL_NAME = "model_server_batch_threads"
# SharedBatchScheduler::QueueOptions defaults.
DEFAULT_MAX_BATCH_SIZE = 1000
DEFAULT_MAX_ENQUEUED_BATCHES = 10

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
        def value(field: str, default: Any) -> Any:
            return getattr(parameters, field).value if parameters.HasField(field) else default

        max_batch_size = int(value("max_batch_size", DEFAULT_MAX_BATCH_SIZE))
        splitting = bool(value("enable_large_batch_splitting", False))
        options = cls(
            num_batch_threads=int(value("num_batch_threads", cpu_count)),
            thread_pool_name=str(value("thread_pool_name", "batch_threads")),
            max_batch_size=max_batch_size,
            batch_timeout_micros=int(value("batch_timeout_micros", 0)),
            max_enqueued_batches=int(
                value("max_enqueued_batches", DEFAULT_MAX_ENQUEUED_BATCHES)
            ),
            enable_large_batch_splitting=splitting,
            max_execution_batch_size=int(
                value("max_execution_batch_size", max_batch_size) if splitting else max_batch_size
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
    return parse_text_proto(content, BatchingParameters(), path)


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

