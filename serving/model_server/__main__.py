"""`python -m serving.model_server --port=8500 --model_name=mnist --model_base_path=/models/mnist`.

The command line of tensorflow_model_server (same flags, defaults and messages), so one
command line and one set of config files drive either server. Exit status 255 on a bad
command line or a failed start, as TF Serving's `return -1`.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from serving.model_server.options import ServerOptions
    from serving.model_server.server import ModelServer

PROGRAM = "python -m serving.model_server"
FAILURE = 255  # main() returns -1


def configure_logging() -> None:
    logging.basicConfig(
        level=os.environ.get("LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname).1s %(name)s] %(message)s",
        stream=sys.stderr,
    )


def main(arguments: list[str] | None = None) -> int:
    configure_logging()
    from serving.model_server.flags import FlagError, parse_command_line, usage

    try:
        command_line = parse_command_line(sys.argv[1:] if arguments is None else arguments)
    except FlagError as error:
        if str(error):
            print(error)
        print(usage(PROGRAM), end="")
        return FAILURE
    if command_line.options.enable_batching and not check_batching_parameters(command_line.options):
        return FAILURE
    # TensorFlow takes seconds to import: only once the command line is known to be good.
    import tensorflow as tf

    from serving.model_server.config import load_config
    from serving.model_server.errors import ModelServerError
    from serving.model_server.server import create_server, serve

    if command_line.show_version:
        print(f"TensorFlow ModelServer: pixelgate-embedded\nTensorFlow Library: {tf.__version__}")
        return 0
    options = command_line.options
    try:
        options.validate()
        config = load_config(options.model_config_file, options.model_name, options.model_base_path)
        if options.port:
            server, _ = create_server(f"0.0.0.0:{options.port}", config, options)
            if options.grpc_socket_path:
                server.add_port(f"unix:{options.grpc_socket_path}")
        else:
            server, _ = create_server(f"unix:{options.grpc_socket_path}", config, options)
        if options.rest_api_port:
            add_rest_api(server, options)
    except ModelServerError as error:
        print(f"Failed to start server. Error: {error}")
        return FAILURE
    serve(server)
    return 0


def add_rest_api(server: ModelServer, options: ServerOptions) -> None:
    """server.cc: a bad monitoring config fails the start; a REST port that cannot open does not."""
    from serving.model_server.errors import ModelServerError
    from serving.model_server.monitoring import read_monitoring_config

    logger = logging.getLogger("serving.model_server")
    if options.rest_api_port == options.port:
        logger.error(
            "server_options.http_port cannot be same as grpc_port. Please use a different port for "
            "HTTP/REST API. Skipped exporting HTTP/REST API."
        )
        return
    monitoring_config = read_monitoring_config(options.monitoring_config_file)
    try:
        server.add_rest_api(f"0.0.0.0:{options.rest_api_port}", monitoring_config)
    except ModelServerError as error:
        logger.error("Failed to start HTTP Server at localhost:%d: %s", options.rest_api_port, error.message)


def check_batching_parameters(options) -> bool:
    """Read --batching_parameters_file before TensorFlow's import, so a bad one fails at once."""
    from serving.model_server.batching import read_batching_options
    from serving.model_server.errors import ModelServerError

    try:
        read_batching_options(options.batching_parameters_file, os.cpu_count() or 1)
    except ModelServerError as error:
        print(f"Failed to start server. Error: {error}")
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
