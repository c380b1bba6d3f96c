"""Build and run the embedded model server: `create_server(address, config) -> (server, port)`, `serve()`.

create_server loads every configured model before returning, as TF Serving's
BuildAndStart does, and binds the address (port 0 picks a free one); `add_rest_api()`
adds the REST API on a second port; serve() starts it, answers SIGTERM/SIGINT with a
graceful stop and returns when the server has stopped.
"""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures

from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from serving.config.monitoring_config_pb2 import MonitoringConfig
from serving.model_server import metrics, tls
from serving.model_server.config import ModelServerConfig, read_model_server_config
from serving.model_server.core import ModelServerCore
from serving.model_server.errors import InvalidArgument, ModelServerError
from serving.model_server.grpc_loop import LoopGrpcServer
from serving.model_server.grpc_service import ModelServiceServicer, PredictionServiceServicer
from serving.model_server.manager import ModelManager
from serving.model_server.oip.grpc_service import InferenceServicer
from serving.model_server.oip.rest import OipRestHandler
from serving.model_server.oip.service import OipService
from serving.model_server.options import ServerOptions
from serving.model_server.rest.api import RestApiHandler
from serving.model_server.rest.http_server import RestApiServer
from serving.protos.inference import grpc_predict_v2_pb2_grpc
from serving.protos.tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

logger = logging.getLogger(__name__)

MAX_MESSAGE_BYTES = 2**31 - 1  # builder.SetMaxMessageSize(INT_MAX) in server.cc
# Names TF Serving's health service reports, plus the full service names probes often ask for.
HEALTH_SERVICE_NAMES = (
    "",
    "ModelService",
    "PredictionService",
    "tensorflow.serving.ModelService",
    "tensorflow.serving.PredictionService",
    "inference.GRPCInferenceService",
)


class ModelServer:
    """A built server: its gRPC server, the models it serves and its health service."""

    def __init__(
        self,
        grpc_server: LoopGrpcServer,
        core: ModelServerCore,
        options: ServerOptions,
        config: ModelServerConfig | None = None,
    ) -> None:
        self.grpc_server = grpc_server
        self.core = core
        self.options = options
        self._initial_config = config  # what the config-file poll compares its first read with
        self.addresses: list[str] = []
        self._health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, grpc_server)
        self._stopping = threading.Event()
        self._config_poll_thread: threading.Thread | None = None
        self.rest_api: RestApiServer | None = None

    @property
    def manager(self) -> ModelManager:
        return self.core.manager

    def add_port(self, address: str) -> int:
        """Listen on one more address (`host:port`, port 0 for any, or `unix:path`); return the port."""
        credentials = tls.server_credentials(self.options.ssl_config_file)
        try:
            if credentials is None:
                port = self.grpc_server.add_insecure_port(address)
            else:
                port = self.grpc_server.add_secure_port(address, credentials)
        except RuntimeError as error:
            raise InvalidArgument(f"Failed to BuildAndStart gRPC server: cannot bind {address}") from error
        self.addresses.append(address)
        return port

    def add_rest_api(self, address: str, monitoring_config: MonitoringConfig | None = None) -> int:
        """Serve the REST API (and the Prometheus page, if configured) on `host:port`; return the port."""
        handler = RestApiHandler(self.core, self.grpc_server.loop, self.options.rest_api_timeout_in_ms)
        self.rest_api = RestApiServer(
            handler,
            address,
            self.options.rest_api_num_threads,
            self.options.rest_api_enable_cors_support,
            monitoring_config,
            OipRestHandler(OipService(self.core), handler),  # the Open Inference Protocol's /v2
        )
        self.rest_api.observers.append(metrics.observe_rest_request)  # TF Serving's REST request metrics
        return self.rest_api.port

    def start(self) -> None:
        self.grpc_server.start()
        if self.rest_api is not None:
            self.rest_api.start()
        for name in HEALTH_SERVICE_NAMES:
            self.grpc_server.run(self._health.set(name, health_pb2.HealthCheckResponse.SERVING))
        self._start_config_polling()

    def stop(self, grace: float | None = None) -> None:
        """Refuse new calls, let calls in flight finish for `grace` seconds, unload the models."""
        self._stopping.set()
        if self.grpc_server.closed:  # stopped before
            return
        self.grpc_server.run(self._health.enter_graceful_shutdown())
        stopped = self.grpc_server.stop(grace)
        if self.rest_api is not None:
            self.rest_api.stop(grace)
        stopped.wait()
        if self._config_poll_thread is not None:
            self._config_poll_thread.join()
        self.manager.stop()
        self.grpc_server.close()

    def wait_for_termination(self, timeout: float | None = None) -> bool:
        return self.grpc_server.wait_for_termination(timeout)

    def _start_config_polling(self) -> None:
        interval = self.options.model_config_file_poll_wait_seconds
        if interval > 0 and self.options.model_config_file and self._config_poll_thread is None:
            self._config_poll_thread = threading.Thread(
                target=self._poll_config_file, args=(interval,), name="model-config-poll", daemon=True
            )
            self._config_poll_thread.start()

    def _poll_config_file(self, interval: float) -> None:
        # Server::PollFilesystemAndReloadConfig(): errors are logged, the old config stays.
        # Compared with what the server started from, not a first read here: the file may
        # change between the start and that read, and that change must not be missed.
        last_config = self._initial_config
        if last_config is None:
            last_config = read_model_server_config(self.options.model_config_file)
        while not self._stopping.wait(interval):
            try:
                config = read_model_server_config(self.options.model_config_file)
            except ModelServerError as error:
                logger.error("Failed to read ModelServerConfig file: %s", error.message)
                continue
            if config == last_config:
                continue
            try:
                self.core.reload_config(config)
                last_config = config
            except ModelServerError as error:
                logger.error("PollFilesystemAndReloadConfig failed to ReloadConfig: %s", error.message)


def create_server(
    address: str, config: ModelServerConfig, options: ServerOptions | None = None
) -> tuple[ModelServer, int]:
    """Load the models `config` lists and bind `address`; return the (unstarted) server and its port."""
    options = options or ServerOptions()
    manager = ModelManager(options)
    manager.start()
    try:
        manager.reload_config(config)
    except BaseException:
        manager.stop()
        raise
    channel_options = [
        ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
        ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
        *parse_channel_arguments(options.grpc_channel_arguments),
    ]
    threads = max(options.grpc_max_threads, 1)
    # Unbatched session runs and the plain gRPC methods share these threads, as many as TF Serving's.
    executor = futures.ThreadPoolExecutor(max_workers=threads, thread_name_prefix="grpc")
    core = ModelServerCore(manager, executor)
    grpc_server = LoopGrpcServer(executor, channel_options)
    prediction_servicer = PredictionServiceServicer(
        core, options.enable_serialization_as_tensor_content, threads
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(prediction_servicer, grpc_server)
    # The Open Inference Protocol beside TF Serving's API, over the same core and run slots.
    grpc_predict_v2_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
        InferenceServicer(OipService(core), prediction_servicer.run_slots), grpc_server
    )
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(ModelServiceServicer(core), grpc_server)
    server = ModelServer(grpc_server, core, options, config)
    try:
        port = server.add_port(address)
    except ModelServerError:
        manager.stop()
        grpc_server.close()
        raise
    return server, port


def parse_channel_arguments(text: str) -> list[tuple[str, int | str]]:
    """--grpc_channel_arguments: `key=value,...`; integer values pass as integers (server.cc)."""
    arguments: list[tuple[str, int | str]] = []
    for item in filter(None, text.split(",")):
        key, separator, value = item.partition("=")
        if not separator:
            raise InvalidArgument(f"Invalid gRPC channel argument {item!r}: expected key=value")
        try:
            arguments.append((key, int(value)))
        except ValueError:
            arguments.append((key, value))
    return arguments


def serve(server: ModelServer, grace: float = 5.0) -> None:
    """Start `server` and block until SIGTERM/SIGINT (or a stop elsewhere), then stop gracefully."""
    stop_requested = threading.Event()

    def request_stop(signal_number: int, frame: object) -> None:
        logger.info("Received %s, shutting down", signal.Signals(signal_number).name)
        stop_requested.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
    server.start()
    for address in server.addresses:
        if address.startswith("unix:"):
            logger.info("Running gRPC ModelServer at UNIX socket %s ...", address.removeprefix("unix:"))
        else:
            logger.info("Running gRPC ModelServer at %s ...", address)
    if server.rest_api is not None:
        logger.info("Exporting HTTP/REST API at:localhost:%d ...", server.rest_api.port)
    # Wake now and then: a signal handler only runs between bytecodes of the main thread.
    while not stop_requested.wait(0.5):
        pass
    server.stop(grace)
