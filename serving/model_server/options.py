"""Settings of the embedded model server, named and defaulted as tensorflow_model_server's flags.

One field per implemented flag (tensorflow_serving/model_servers/main.cc, server.h), so
a command line means the same thing to either server. `validate()` repeats the checks
TF Serving's Server::BuildAndStart makes, with its messages.
"""

from __future__ import annotations

import dataclasses
import os

from serving.model_server.errors import InvalidArgument


def _default_grpc_threads() -> int:
    # server.h: grpc_max_threads = 4.0 * port::NumSchedulableCPUs()
    return 4 * (os.cpu_count() or 1)


@dataclasses.dataclass
class ServerOptions:
    """What `python -m serving.model_server --flag=value ...` sets; defaults are TF Serving's."""

    port: int = 8500
    grpc_socket_path: str = ""
    grpc_max_threads: int = dataclasses.field(default_factory=_default_grpc_threads)
    grpc_channel_arguments: str = ""
    rest_api_port: int = 0
    # server.h: http_num_threads = 4.0 * port::NumSchedulableCPUs(), http_timeout_in_ms = 30000
    rest_api_num_threads: int = dataclasses.field(default_factory=_default_grpc_threads)
    rest_api_timeout_in_ms: int = 30000
    rest_api_enable_cors_support: bool = False
    model_name: str = "default"
    model_base_path: str = ""
    model_config_file: str = ""
    model_config_file_poll_wait_seconds: int = 0
    file_system_poll_wait_seconds: int = 1
    max_num_load_retries: int = 5
    load_retry_interval_micros: int = 60 * 1000 * 1000
    allow_version_labels_for_unavailable_models: bool = False
    enable_batching: bool = False
    batching_parameters_file: str = ""
    enable_per_model_batching_parameters: bool = False
    monitoring_config_file: str = ""
    ssl_config_file: str = ""
    enable_model_warmup: bool = True
    num_request_iterations_for_warmup: int = 0
    saved_model_tags: str = "serve"
    tensorflow_session_parallelism: int = 0
    tensorflow_intra_op_parallelism: int = 0
    tensorflow_inter_op_parallelism: int = 0
    tensorflow_session_config_file: str = ""
    enable_signature_method_name_check: bool = False
    enable_serialization_as_tensor_content: bool = False
    enable_grpc_healthcheck_service: bool = False

    def validate(self) -> None:
        """Raise InvalidArgument for combinations TF Serving refuses to start with."""
        if self.port == 0 and not self.grpc_socket_path:
            raise InvalidArgument(
                "At least one of server_options.grpc_port or server_options.grpc_socket_path must be set."
            )
        if not self.model_base_path and not self.model_config_file:
            raise InvalidArgument(
                "Both server_options.model_base_path and server_options.model_config_file are empty!"
            )
        if self.batching_parameters_file and not self.enable_batching:
            raise InvalidArgument(
                "server_options.batching_parameters_file is set without setting "
                "server_options.enable_batching to true."
            )
        if (
            self.tensorflow_intra_op_parallelism > 0
            and self.tensorflow_inter_op_parallelism > 0
            and self.tensorflow_session_parallelism > 0
        ):
            raise InvalidArgument(
                "Either configure server_options.tensorflow_session_parallelism or "
                "(server_options.tensorflow_intra_op_parallelism, "
                "server_options.tensorflow_inter_op_parallelism) separately. "
                "You cannot configure all."
            )

    @property
    def tag_set(self) -> list[str]:
        """The MetaGraphDef tags to load, from the comma-separated --saved_model_tags."""
        return [tag for tag in self.saved_model_tags.split(",") if tag]

    @property
    def intra_and_inter_op_threads(self) -> tuple[int, int]:
        """Thread counts for each session, resolved the way server.cc resolves them."""
        if self.tensorflow_intra_op_parallelism > 0 or self.tensorflow_inter_op_parallelism > 0:
            return self.tensorflow_intra_op_parallelism, self.tensorflow_inter_op_parallelism
        return self.tensorflow_session_parallelism, self.tensorflow_session_parallelism
