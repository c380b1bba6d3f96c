"""One loaded model version: a TensorFlow session holding the SavedModel's graph, and its MetaGraphDef.

This is TF Serving's SavedModelBundle. The graph runs through the C++ Session::Run, as in
TF Serving, so a model behaves (and fails) the same in both servers. Loading a Keras 3
model saved through tf.Module + tf.saved_model.save is such a failure; see
`_warn_about_unrestored_variables`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor
from typing import TYPE_CHECKING

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from google.protobuf.message import DecodeError
from tensorflow.core.protobuf import config_pb2, saved_model_pb2
from tensorflow.python.client import pywrap_tf_session

from serving.model_server import metrics
from serving.model_server.errors import DataLoss, InvalidArgument, ModelServerError, NotFound, from_code
from serving.model_server.run_options import in_thread, remaining_timeout_in_ms
from serving.protos.tensorflow.core.protobuf import meta_graph_pb2

if TYPE_CHECKING:
    from serving.model_server.batching import BatchingSession

logger = logging.getLogger(__name__)

SAVED_MODEL_FILENAMES = ("saved_model.pb", "saved_model.pbtxt")


def servable_id(model_name: str, version: int) -> str:
    """TF Serving's ServableId::DebugString(), used in its logs and load errors."""
    return f"{{name: {model_name} version: {version}}}"


class SavedModelBundle:
    """A model version ready to run; counts requests in flight so unloading can wait for them."""

    def __init__(
        self,
        model_name: str,
        version: int,
        export_dir: str,
        session: tf.compat.v1.Session,
        meta_graph_def: meta_graph_pb2.MetaGraphDef,
    ) -> None:
        self.model_name = model_name
        self.version = version
        self.export_dir = export_dir
        self.meta_graph_def = meta_graph_def
        self._session = session
        self._outputs_by_name: dict[str, object] = {}
        self._outputs_lock = threading.Lock()
        self._in_flight = 0
        self._idle = threading.Condition()
        # Set when --enable_batching: runs then queue up and run together (batching.py).
        self.batching: BatchingSession | None = None

    @property
    def signature_defs(self) -> Mapping[str, meta_graph_pb2.SignatureDef]:
        return self.meta_graph_def.signature_def

    async def run(
        self,
        feeds: Sequence[tuple[str, np.ndarray]],
        fetches: Sequence[str],
        executor: Executor | None = None,
    ) -> list[np.ndarray]:
        """Session::Run: a batched run awaits its batch; an unbatched one runs on `executor`."""
        if self.batching is not None:
            return await self.batching.run(feeds, fetches, executor)
        return await in_thread(executor, self.run_unbatched, feeds, fetches)

    def run_unbatched(
        self, feeds: Sequence[tuple[str, np.ndarray]], fetches: Sequence[str]
    ) -> list[np.ndarray]:
        """Session::Run: feed tensors by name, return the fetched tensors; TF errors keep their code."""
        feed_dict = {self._graph_output(name): value for name, value in feeds}
        fetch_list = [self._graph_output(name) for name in fetches]
        options = _run_options_buffer(remaining_timeout_in_ms())
        started = time.perf_counter()
        try:
            # The raw call, not Session.run(): that one converts and re-checks feeds in
            # Python and rewrites TF's messages, so errors would differ from TF Serving's.
            outputs = self._session._call_tf_sessionrun(options, feed_dict, fetch_list, [], None)
            metrics.record_graph_run(time.perf_counter() - started)
            return outputs
        except tf.errors.OpError as error:
            raise from_code(error.error_code, error.message) from None
        finally:
            if options is not None:
                pywrap_tf_session.TF_DeleteBuffer(options)

    def is_placeholder(self, tensor_name: str) -> bool:
        """Whether `tensor_name` is a Placeholder's output (a graph input, not an inner tensor)."""
        try:
            return self._session.graph.get_tensor_by_name(tensor_name).op.type == "Placeholder"
        except (KeyError, ValueError):
            return False

    def _graph_output(self, tensor_name: str) -> object:
        with self._outputs_lock:
            output = self._outputs_by_name.get(tensor_name)
            if output is None:
                try:
                    tensor = self._session.graph.get_tensor_by_name(tensor_name)
                except (KeyError, ValueError) as error:
                    raise NotFound(f"Tensor {tensor_name} not found in graph") from error
                output = self._outputs_by_name[tensor_name] = tensor._as_tf_output()
            return output

    def acquire(self) -> None:
        with self._idle:
            self._in_flight += 1

    def release(self) -> None:
        with self._idle:
            self._in_flight -= 1
            if self._in_flight == 0:
                self._idle.notify_all()

    def close(self) -> None:
        """Wait for requests in flight, then free the session."""
        with self._idle:
            self._idle.wait_for(lambda: self._in_flight == 0)
        if self.batching is not None:
            self.batching.close()
        self._session.close()


def _run_options_buffer(timeout_in_ms: int | None) -> object | None:
    """A TF_Buffer holding RunOptions(timeout_in_ms), or None for TF's defaults (no timeout)."""
    if timeout_in_ms is None:
        return None
    options = config_pb2.RunOptions(timeout_in_ms=timeout_in_ms)
    return pywrap_tf_session.TF_NewBufferFromString(options.SerializeToString())


def read_meta_graph_def(export_dir: str, tags: Sequence[str]) -> meta_graph_pb2.MetaGraphDef:
    """The MetaGraphDef with exactly `tags` from saved_model.pb, with TF's messages when absent."""
    path = os.path.join(export_dir, "saved_model.pb")
    if not any(os.path.exists(os.path.join(export_dir, name)) for name in SAVED_MODEL_FILENAMES):
        raise NotFound(
            "Could not find SavedModel .pb or .pbtxt at supplied export directory path: "
            f"{export_dir}. Check that the directory exists and that you have the right permissions "
            "for accessing it."
        )
    saved_model = saved_model_pb2.SavedModel()
    if not os.path.exists(path):  # text format: leave the tag check to the loader
        return meta_graph_pb2.MetaGraphDef()
    with open(path, "rb") as saved_model_file:
        try:
            saved_model.ParseFromString(saved_model_file.read())
        except DecodeError:  # ReadBinaryProto()'s answer in TF's SavedModel reader
            raise DataLoss(f"Can't parse {path} as binary proto") from None
    for meta_graph_def in saved_model.meta_graphs:
        if set(meta_graph_def.meta_info_def.tags) == set(tags):
            return meta_graph_def
    available = [",".join(meta_graph_def.meta_info_def.tags) for meta_graph_def in saved_model.meta_graphs]
    raise NotFound(
        f"MetaGraphDef associated with tags '{','.join(tags)}' could not be found in SavedModel, "
        f"with available tags '[{' '.join(available)}]'. To inspect available tag-sets in the "
        "SavedModel, please use the SavedModel CLI: `saved_model_cli`"
    )


def load_saved_model(
    model_name: str,
    version: int,
    export_dir: str,
    tags: Sequence[str] = ("serve",),
    session_config: tf.compat.v1.ConfigProto | None = None,
) -> SavedModelBundle:
    """Load one version into its own graph and session (TF Serving's LoadSavedModel)."""
    started = time.perf_counter()
    try:
        bundle = _load_saved_model(model_name, version, export_dir, tags, session_config)
    except BaseException:
        metrics.record_load(export_dir, False, time.perf_counter() - started)
        raise
    metrics.record_load(export_dir, True, time.perf_counter() - started)
    return bundle


def _load_saved_model(
    model_name: str,
    version: int,
    export_dir: str,
    tags: Sequence[str],
    session_config: tf.compat.v1.ConfigProto | None,
) -> SavedModelBundle:
    read_meta_graph_def(export_dir, tags)  # TF Serving's errors for a missing file or tag set
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph, config=session_config)
    try:
        with graph.as_default():
            meta_graph_def = tf.compat.v1.saved_model.loader.load(session, list(tags), export_dir)
            _warn_about_unrestored_variables(session, graph, meta_graph_def, export_dir)
        # Nothing may add ops once requests run; this also makes the graph safe to share.
        graph.finalize()
    except tf.errors.OpError as error:
        session.close()
        raise from_code(error.error_code, error.message) from None
    except (OSError, RuntimeError, ValueError) as error:
        session.close()
        raise ModelServerError(f"Failed to load SavedModel at {export_dir}: {error}") from error
    return SavedModelBundle(model_name, version, export_dir, session, meta_graph_def)


def _warn_about_unrestored_variables(
    session: tf.compat.v1.Session,
    graph: tf.Graph,
    meta_graph_def: meta_graph_pb2.MetaGraphDef,
    export_dir: str,
) -> None:
    """Log variables the SavedModel's restore op leaves empty: TF Serving fails on them too.

    A Keras 3 model saved via tf.Module + tf.saved_model.save loads fine in Python but its
    graph reads variables nothing restores: "Could not find variable ..." on every request
    (tensorflow/serving#2226). keras.export.ExportArchive / Model.export() avoid it.
    """
    handles = [
        operation.outputs[0]
        for operation in _signature_ancestors(graph, meta_graph_def)
        if operation.type == "VarHandleOp"
    ]
    if not handles:
        return
    try:
        initialized = session.run([tf.raw_ops.VarIsInitializedOp(resource=handle) for handle in handles])
    except tf.errors.OpError:  # only a diagnostic: never fail a load over it
        logger.debug("Could not check variables of %s", export_dir, exc_info=True)
        return
    missing = [handle.op.name for handle, is_set in zip(handles, initialized, strict=True) if not is_set]
    if missing:
        logger.warning(
            "SavedModel at %s has %d variable(s) its restore op does not initialize (%s); requests "
            "that read them fail with 'Could not find variable', here as in TensorFlow Serving. "
            "Export Keras models with keras.export.ExportArchive or Model.export().",
            export_dir,
            len(missing),
            ", ".join(missing[:5]),
        )


def session_config(
    intra_op_threads: int = 0, inter_op_threads: int = 0, config_file: str = ""
) -> tf.compat.v1.ConfigProto:
    """The ConfigProto each version's session gets: --tensorflow_session_config_file, then threads."""
    config = tf.compat.v1.ConfigProto()
    if config_file:
        try:
            with open(config_file, encoding="utf-8") as text:
                text_format.Parse(text.read(), config)
        except FileNotFoundError as error:
            raise NotFound(f"{config_file}; No such file or directory") from error
        except (OSError, text_format.ParseError) as error:
            logger.error("Error parsing text-format tensorflow.ConfigProto: %s", error)
            raise InvalidArgument(f"Invalid protobuf file: '{config_file}'") from error
    # server.cc sets both counts whenever any parallelism flag is given (0 = TF decides).
    config.intra_op_parallelism_threads = intra_op_threads
    config.inter_op_parallelism_threads = inter_op_threads
    return config


def _signature_ancestors(graph: tf.Graph, meta_graph_def: meta_graph_pb2.MetaGraphDef) -> list[tf.Operation]:
    """Every op a signature output depends on (a function gets its variables as call inputs)."""
    pending = []
    for signature in meta_graph_def.signature_def.values():
        for info in signature.outputs.values():
            if info.name:
                pending.append(graph.get_operation_by_name(info.name.partition(":")[0]))
    seen: dict[str, tf.Operation] = {}
    while pending:
        operation = pending.pop()
        if operation.name in seen:
            continue
        seen[operation.name] = operation
        pending.extend(tensor.op for tensor in operation.inputs)
        pending.extend(operation.control_inputs)
    return list(seen.values())
