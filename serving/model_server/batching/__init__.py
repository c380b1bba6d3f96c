"""Server-side batching (--enable_batching): parameters, the shared scheduler, the batching session."""

from serving.model_server.batching.parameters import (
    BatchingOptions,
    read_batching_options,
    read_model_batching_options,
)
from serving.model_server.batching.scheduler import BatchScheduler
from serving.model_server.batching.session import BatchingSession

__all__ = [
    "BatchScheduler",
    "BatchingOptions",
    "BatchingSession",
    "read_batching_options",
    "read_model_batching_options",
]
