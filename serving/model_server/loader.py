"""Loading one model version as TF Serving's SavedModelBundleFactory does: its session, its
batching session on the server's one batch scheduler, then its warmup requests; with retries.
"""

from __future__ import annotations

import gc
import logging
import os
import threading

from serving.model_server.batching import (
    BatchingOptions,
    BatchingSession,
    BatchScheduler,
    read_batching_options,
    read_model_batching_options,
)
from serving.model_server.bundle import SavedModelBundle, load_saved_model, servable_id, session_config
from serving.model_server.config import ModelConfig
from serving.model_server.errors import ModelServerError
from serving.model_server.options import ServerOptions
from serving.model_server.version_policy import aspired_versions
from serving.model_server.warmup import run_warmup

logger = logging.getLogger(__name__)


class VersionLoader:
    """Loads versions ready to serve; `stop()` ends the batch threads once every version is unloaded."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        self._session_config = session_config(
            *options.intra_and_inter_op_threads, options.tensorflow_session_config_file
        )
        # One scheduler for every version, as TF Serving's SavedModelBundleFactory holds one.
        self._batch_scheduler: BatchScheduler | None = None
        if options.enable_batching:
            batching = read_batching_options(options.batching_parameters_file, os.cpu_count() or 1)
            self._batch_scheduler = BatchScheduler(batching)

    def load(self, model_name: str, version: int, path: str) -> SavedModelBundle:
        """The version at `path`, batching (if on) and warmed up; the load's error if any step fails."""
        logger.info("Loading servable version %s from %s", servable_id(model_name, version), path)
        bundle = load_saved_model(model_name, version, path, self.options.tag_set, self._session_config)
        try:
            if self._batch_scheduler is not None:  # before warmup, so warmup runs through it too
                self._add_batching(bundle, self._batch_scheduler, path)
            if self.options.enable_model_warmup:
                run_warmup(
                    bundle,
                    self.options.num_request_iterations_for_warmup,
                    self.options.enable_signature_method_name_check,
                )
        except ModelServerError:
            bundle.close()
            raise
        return bundle

    def load_with_retries(
        self, model: ModelConfig, version: int, path: str, stopping: threading.Event
    ) -> tuple[SavedModelBundle | None, ModelServerError | None]:
        """`load`, tried --max_num_load_retries more times, --load_retry_interval_micros apart,
        while the version policy still asks for the version and `stopping` is not set."""
        error: ModelServerError | None = None
        name = servable_id(model.name, version)
        retries = max(self.options.max_num_load_retries, 0)
        for attempt in range(retries + 1):
            try:
                return self.load(model.name, version, path), None
            except ModelServerError as load_error:
                error = load_error
            except Exception as load_error:  # noqa: BLE001 - a broken model fails only its version
                logger.exception("Unexpected error loading %s", name)
                error = ModelServerError(str(load_error))
            if attempt < retries:
                if not _still_aspired(model, version):
                    # AspiredVersionsManager cancels the retries of a version no longer aspired.
                    logger.info("Retrying of Loading servable: %s was cancelled.", name)
                    break
                logger.warning("Loading servable version %s failed: %s; retrying", name, error)
                if stopping.wait(max(self.options.load_retry_interval_micros, 0) / 1e6):
                    break
        return None, error

    def _add_batching(self, bundle: SavedModelBundle, scheduler: BatchScheduler, path: str) -> None:
        batching_options: BatchingOptions | None = scheduler.options
        if self.options.enable_per_model_batching_parameters:
            batching_options = read_model_batching_options(path, scheduler.options)
        if batching_options is not None:
            name = servable_id(bundle.model_name, bundle.version)
            bundle.batching = BatchingSession(scheduler, bundle.run_unbatched, name, batching_options)

    def stop(self) -> None:
        if self._batch_scheduler is not None:
            self._batch_scheduler.stop()


def _still_aspired(model: ModelConfig, version: int) -> bool:
    """Whether the version policy still asks for `version`, reading the base path again (the
    poll that would tell waits for this load to end)."""
    try:
        return version in aspired_versions(model)
    except ModelServerError:  # unreadable now: a poll would change nothing either
        return True


def settle_heap() -> None:
    """Collect once, then leave what survives out of garbage collection until versions change.

    A loaded TensorFlow holds very many long-lived Python objects, and full collections
    walking them in the middle of requests make the latency's tail (docs/benchmarks.md).
    Unfreezing first lets an unloaded version's reference cycles be freed.
    """
    gc.unfreeze()
    gc.collect()
    gc.freeze()
