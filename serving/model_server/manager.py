"""ModelManager: which versions of which models are loaded, kept in step with config and disk.

TF Serving's ServerCore + FileSystemStoragePathSource + AspiredVersionsManager in one:
poll each base path for integer version directories, pick the aspired ones by version
policy, load new versions before unloading old ones (AvailabilityPreservingPolicy), track
each version's state for GetModelStatus, and resolve version labels.
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import logging
import threading
from collections.abc import Iterator

from serving.model_server.bundle import SavedModelBundle, servable_id
from serving.model_server.config import ModelServerConfig, validate_model_server_config
from serving.model_server.errors import (
    FailedPrecondition,
    InvalidArgument,
    ModelServerError,
    NotFound,
    Unavailable,
)
from serving.model_server.loader import VersionLoader, settle_heap
from serving.model_server.options import ServerOptions
from serving.model_server.version_policy import aspired_versions

logger = logging.getLogger(__name__)


class VersionState(enum.IntEnum):
    """ModelVersionStatus.State in get_model_status.proto."""

    START = 10
    LOADING = 20
    AVAILABLE = 30
    UNLOADING = 40
    END = 50


@dataclasses.dataclass(frozen=True)
class VersionStatus:
    state: VersionState
    error: ModelServerError | None = None


class ModelManager:
    """Loads, serves and unloads model versions; thread-safe; `stop()` when done."""

    def __init__(self, options: ServerOptions | None = None) -> None:
        self.options = options or ServerOptions()
        self._loader = VersionLoader(self.options)
        self.config = ModelServerConfig()
        self._serving: dict[str, dict[int, SavedModelBundle]] = {}
        self._states: dict[str, dict[int, VersionStatus]] = {}
        self._failed: dict[str, set[int]] = {}  # failed while aspired: not retried until unaspired
        # Per model added by a config: the first version to become AVAILABLE or reach END since,
        # which decides whether the model became available (ServableStateMonitor, below).
        self._first_settled: dict[str, tuple[int, VersionStatus]] = {}
        self._labels: dict[str, dict[str, int]] | None = None
        self._lock = threading.Lock()  # guards the maps above; held only briefly
        self._changed = threading.Condition(self._lock)
        self._update_lock = threading.RLock()  # one config reload or poll at a time
        self._stopping = threading.Event()
        self._poll_thread: threading.Thread | None = None

    # Requests -----------------------------------------------------------------------

    @contextlib.contextmanager
    def servable(
        self, model_name: str, version: int | None = None, version_label: str | None = None
    ) -> Iterator[SavedModelBundle]:
        """The version a ModelSpec asks for, kept loaded while the caller uses it."""
        if not model_name:
            raise InvalidArgument("ModelSpec has no name specified.")
        if version_label is not None:
            version = self._version_for_label(model_name, version_label)
        with self._lock:
            versions = self._serving.get(model_name, {})
            if version is None:
                bundle = versions[max(versions)] if versions else None
                request = f"Latest({model_name})"
            else:
                bundle = versions.get(version)
                request = f"Specific({model_name}, {version})"
            if bundle is None:
                raise NotFound(f"Servable not found for request: {request}")
            bundle.acquire()
        try:
            yield bundle
        finally:
            bundle.release()

    def version_states(self, model_name: str) -> dict[int, VersionStatus]:
        """Every version this server has known of the model, newest first."""
        with self._lock:
            states = self._states.get(model_name, {})
            return {version: states[version] for version in sorted(states, reverse=True)}

    def _version_for_label(self, model_name: str, label: str) -> int:
        with self._lock:
            if self._labels is None:
                raise Unavailable(f"Model labels does not init yet.{label}")
            version = self._labels.get(model_name, {}).get(label)
        if version is None:
            raise InvalidArgument(f"Unrecognized servable version label: {label}")
        return version

    # Configuration ------------------------------------------------------------------

    def reload_config(self, new_config: ModelServerConfig, wait: bool = True) -> None:
        """Serve the models `new_config` lists; with `wait`, block until new ones are available."""
        with self._update_lock:
            if new_config.WhichOneof("config") is None:
                logger.info("Taking no action for empty config.")
                return
            config = validate_model_server_config(new_config)
            new_models = set(_names(config)) - set(_names(self.config))
            self._update_labels(config)
            with self._lock:
                for name in new_models:
                    self._first_settled.pop(name, None)
            self.config = config
            logger.info("Adding/updating models.")
            self.poll_file_system()
        if wait:
            self._wait_until_available(new_models)
        logger.info("Finished adding/updating models")

    def _update_labels(self, config: ModelServerConfig) -> None:
        # server_core.cc UpdateModelVersionLabelMap(): a label may only name an available
        # version, unless --allow_version_labels_for_unavailable_models and it is a new label.
        labels: dict[str, dict[str, int]] = {}
        for model in config.model_config_list.config:
            states = self.version_states(model.name)
            for label, version in model.version_labels.items():
                allowed = False
                if self.options.allow_version_labels_for_unavailable_models:
                    current = (self._labels or {}).get(model.name, {}).get(label)
                    allowed = current is None or current == version
                state = states.get(version)
                if not allowed and (state is None or state.state != VersionState.AVAILABLE):
                    raise FailedPrecondition(
                        f"Request to assign label to version {version} of model {model.name}, "
                        "which is not currently available for inference"
                    )
                labels.setdefault(model.name, {})[label] = version
        with self._lock:
            self._labels = labels

    def _wait_until_available(self, model_names: set[str]) -> None:
        """ServerCore::WaitUntilModelsAvailable(): no timeout, like TF Serving's default.

        Its ServableStateMonitor waits for Latest(model): the first version of each model to
        become AVAILABLE or reach END decides. Versions load newest first, so when the newest
        fails, the model did not become available, even if an older version loads after it.
        """
        with self._changed:
            while not self._stopping.is_set() and not model_names <= self._first_settled.keys():
                self._changed.wait(timeout=1.0)
            settled = {name: self._first_settled.get(name) for name in model_names}
        unavailable = sorted(
            ((name, entry) for name, entry in settled.items()
             if entry is None or entry[1].state != VersionState.AVAILABLE),
            key=lambda item: item[0],
        )
        if unavailable:
            details = "".join(
                f"{{{servable_id(name, entry[0])}"
                + (f" due to error: {entry[1].error}" if entry[1].error is not None else "") + "}, "
                for name, entry in unavailable if entry is not None
            )
            raise ModelServerError(f"{len(unavailable)} model(s) did not become available: {{{details}}}")

    # File-system polling ------------------------------------------------------------

    def start(self) -> None:
        """Poll base paths every --file_system_poll_wait_seconds (0: only once, < 0: never)."""
        interval = self.options.file_system_poll_wait_seconds
        if interval > 0 and self._poll_thread is None:
            self._poll_thread = threading.Thread(
                target=self._poll_periodically, args=(interval,), name="file-system-poll", daemon=True
            )
            self._poll_thread.start()

    def _poll_periodically(self, interval: float) -> None:
        while not self._stopping.wait(interval):
            try:
                self.poll_file_system()
            except Exception:  # a poll must never end the thread
                logger.exception("File-system poll failed")

    def poll_file_system(self) -> None:
        """One poll: find each model's aspired versions on disk, then load and unload to match."""
        if self.options.file_system_poll_wait_seconds < 0:
            return
        with self._update_lock:
            models = list(self.config.model_config_list.config)
            try:
                # As FileSystemStoragePathSource: one unreadable base path skips the whole poll.
                aspired = {model.name: aspired_versions(model) for model in models}
            except ModelServerError as error:
                logger.error(
                    "FileSystemStoragePathSource encountered a filesystem access error: %s", error.message
                )
                return
            changed = False
            for model in models:
                changed |= self._apply_aspired_versions(model.name, aspired[model.name])
            for removed in set(self._serving) - set(aspired):
                changed |= self._apply_aspired_versions(removed, {})
            if changed:
                settle_heap()

    def _apply_aspired_versions(self, model_name: str, aspired: dict[int, str]) -> bool:
        """Load and unload to match; whether any version was loaded, tried or unloaded."""
        failed = self._failed.setdefault(model_name, set())
        failed.intersection_update(aspired)
        loaded = set(self._serving.get(model_name, {}))
        changed = self._unload_unaspired(model_name, set(aspired))
        for version in sorted(set(aspired) - loaded - failed, reverse=True):
            if self._stopping.is_set():
                return changed
            changed = True
            if not self._load_version(model_name, version, aspired[version]):
                failed.add(version)
            self._unload_unaspired(model_name, set(aspired))
        return changed

    def _unload_unaspired(self, model_name: str, aspired: set[int]) -> bool:
        """AvailabilityPreservingPolicy, asked before each load and after: unload the lowest version
        no longer aspired while no version is aspired, an aspired one serves, or more than one
        unaspired version serves; so the model keeps one version serving until an aspired one does."""
        changed = False
        while True:
            available = set(self._serving.get(model_name, {}))
            unaspired = sorted(available - aspired)
            if not unaspired or not (not aspired or available & aspired or len(unaspired) > 1):
                return changed
            self._unload_version(model_name, unaspired[0])
            changed = True

    # Loading and unloading ----------------------------------------------------------

    def _load_version(self, model_name: str, version: int, path: str) -> bool:
        name = servable_id(model_name, version)
        self._set_state(model_name, version, VersionStatus(VersionState.START))
        self._set_state(model_name, version, VersionStatus(VersionState.LOADING))
        model = next(m for m in self.config.model_config_list.config if m.name == model_name)
        bundle, error = self._loader.load_with_retries(model, version, path, self._stopping)
        if bundle is None:
            logger.error("Loading servable version %s failed: %s", name, error)
            self._set_state(model_name, version, VersionStatus(VersionState.END, error))
            return False
        with self._lock:
            self._serving.setdefault(model_name, {})[version] = bundle
            self._set_state_locked(model_name, version, VersionStatus(VersionState.AVAILABLE))
        logger.info("Successfully loaded servable version %s", name)
        return True

    def _unload_version(self, model_name: str, version: int) -> None:
        name = servable_id(model_name, version)
        with self._lock:
            bundle = self._serving.get(model_name, {}).pop(version, None)
            self._set_state_locked(model_name, version, VersionStatus(VersionState.UNLOADING))
        logger.info("Unloading servable version %s", name)
        if bundle is not None:
            bundle.close()  # waits for requests still using it
        self._set_state(model_name, version, VersionStatus(VersionState.END))
        logger.info("Done unloading servable version %s", name)

    def _set_state(self, model_name: str, version: int, status: VersionStatus) -> None:
        with self._lock:
            self._set_state_locked(model_name, version, status)

    def _set_state_locked(self, model_name: str, version: int, status: VersionStatus) -> None:
        self._states.setdefault(model_name, {})[version] = status
        if status.state in (VersionState.AVAILABLE, VersionState.END):
            self._first_settled.setdefault(model_name, (version, status))
        self._changed.notify_all()

    def stop(self) -> None:
        """Stop polling and unload every version."""
        self._stopping.set()
        with self._changed:
            self._changed.notify_all()
        if self._poll_thread is not None:
            self._poll_thread.join()
        with self._update_lock:
            for model_name in list(self._serving):
                for version in list(self._serving[model_name]):
                    self._unload_version(model_name, version)
        self._loader.stop()


def _names(config: ModelServerConfig) -> list[str]:
    return [model.name for model in config.model_config_list.config]
