"""tensorflow_model_server's command line: every flag it knows, parsed the way it parses them.

Syntax as TensorFlow's Flags::Parse: `--name=value`; a bool alone (`--enable_batching`)
or `=true`/`=false`. `--name value` is accepted too for non-bool flags. Flags of TF
Serving that the embedded server does not implement are accepted with a warning when
set, unless ignoring them would weaken security (ALTS): those are refused.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re

from serving.model_server.options import ServerOptions

logger = logging.getLogger(__name__)

_INTEGER = re.compile(r"\s*[+-]?\d+")
_CPUS = os.cpu_count() or 1


class FlagError(ValueError):
    """The command line cannot be used; the message says why."""


@dataclasses.dataclass(frozen=True)
class Flag:
    name: str
    kind: type  # int, float, bool or str
    default: object
    help: str
    # "implemented" (a ServerOptions field), "ignored" (warn when set), "refused" (error when set)
    support: str = "implemented"


def _option(name: str, help_text: str) -> Flag:
    """A flag backed by the ServerOptions field of the same name, and its default."""
    default = getattr(ServerOptions(), name)
    return Flag(name, type(default), default, help_text)


FLAGS: tuple[Flag, ...] = (
    _option("port", "TCP port for the gRPC API (0: none)"),
    _option("grpc_socket_path", "UNIX socket for the gRPC API, if set"),
    _option("rest_api_port", "HTTP/REST port (0: off); must differ from --port"),
    _option("rest_api_num_threads", "REST requests processed at once"),
    _option("rest_api_timeout_in_ms", "session-run timeout of REST predict/classify/regress calls"),
    _option("rest_api_enable_cors_support", "CORS headers on REST answers"),
    _option("enable_batching", "run concurrent requests to one model version as one batch"),
    _option("allow_version_labels_for_unavailable_models", "let labels name versions not loaded yet"),
    _option("batching_parameters_file", "text BatchingParameters file (needs --enable_batching)"),
    _option(
        "enable_per_model_batching_parameters",
        "batch sizes and timeout from each version's batching_params.pbtxt (none: no batching)",
    ),
    _option(
        "model_config_file", "text ModelServerConfig file (then --model_name/--model_base_path are ignored)"
    ),
    _option(
        "model_config_file_poll_wait_seconds", "seconds between re-reads of --model_config_file (0: once)"
    ),
    _option("model_name", "name of the single model"),
    _option("model_base_path", "directory holding the single model's version directories"),
    Flag("num_load_threads", int, 0, "threads loading versions", "ignored"),
    Flag("num_unload_threads", int, 0, "threads unloading versions", "ignored"),
    _option("max_num_load_retries", "retries after a failed load"),
    _option("load_retry_interval_micros", "microseconds between load retries"),
    _option("file_system_poll_wait_seconds", "seconds between polls for new versions (0: once, <0: never)"),
    Flag("flush_filesystem_caches", bool, True, "flush file-system caches after loads", "ignored"),
    _option("tensorflow_session_parallelism", "threads per session run (0: automatic)"),
    _option("tensorflow_session_config_file", "text ConfigProto file for each session"),
    _option("tensorflow_intra_op_parallelism", "threads within one op (0: automatic)"),
    _option("tensorflow_inter_op_parallelism", "ops run at once (0: automatic)"),
    Flag("use_alts_credentials", bool, False, "serve with ALTS credentials", "refused"),
    _option("ssl_config_file", "text SSLConfig file: TLS (and client certificates) for the gRPC API"),
    Flag("platform_config_file", str, "", "text PlatformConfigMap file", "refused"),
    Flag("per_process_gpu_memory_fraction", float, 0.0, "GPU memory fraction per process", "ignored"),
    _option("saved_model_tags", "comma-separated MetaGraphDef tags to load"),
    _option("grpc_channel_arguments", "gRPC server arguments, key=value,..."),
    _option("grpc_max_threads", "threads answering gRPC calls"),
    _option("enable_model_warmup", "replay assets.extra/tf_serving_warmup_requests before serving"),
    _option("num_request_iterations_for_warmup", "times each warmup request runs (0: once)"),
    Flag("version", bool, False, "print the version and exit"),
    _option("monitoring_config_file", "text MonitoringConfig file (Prometheus page on the REST port)"),
    Flag("remove_unused_fields_from_bundle_metagraph", bool, True, "trim the loaded MetaGraphDef", "ignored"),
    Flag("prefer_tflite_model", bool, False, "serve model.tflite when present", "ignored"),
    Flag("num_tflite_pools", int, _CPUS, "TF Lite interpreter pools", "ignored"),
    Flag("num_tflite_interpreters_per_pool", int, 1, "TF Lite interpreters per pool", "ignored"),
    _option("enable_signature_method_name_check", "require predict/classify/regress method names"),
    Flag("xla_cpu_compilation_enabled", bool, False, "XLA:CPU JIT", "ignored"),
    Flag("xla_gpu_compilation_enabled", bool, False, "XLA:GPU JIT", "ignored"),
    Flag("enable_profiler", bool, True, "profiler service", "ignored"),
    Flag("thread_pool_factory_config_file", str, "", "text ThreadPoolConfig file", "ignored"),
    Flag("mixed_precision", str, "", "mixed precision mode", "ignored"),
    Flag("skip_initialize_tpu", bool, False, "skip TPU initialization", "ignored"),
    _option("enable_grpc_healthcheck_service", "grpc.health.v1 service (always on here)"),
    _option("enable_serialization_as_tensor_content", "answer tensors as tensor_content"),
)
_FLAGS_BY_NAME = {flag.name: flag for flag in FLAGS}


@dataclasses.dataclass
class CommandLine:
    options: ServerOptions
    show_version: bool = False


def usage(program: str) -> str:
    """Flags::Usage() layout: one line per flag with its default, type and meaning."""
    lines = [f"usage: {program}", "Flags:"]
    for flag in FLAGS:
        if flag.kind is bool:
            shown, type_name = f"--{flag.name}={'true' if flag.default else 'false'}", "bool"
        elif flag.kind is str:
            shown, type_name = f'--{flag.name}="{flag.default}"', "string"
        elif flag.kind is float:
            shown, type_name = f"--{flag.name}={flag.default:f}", "float"
        else:
            shown, type_name = f"--{flag.name}={flag.default}", "int"
        lines.append(f"\t{shown:<33}\t{type_name}\t{flag.help}")
    return "\n".join(lines) + "\n"


def parse_command_line(arguments: list[str]) -> CommandLine:
    """Parse argv[1:]; FlagError for unknown arguments, bad values and refused flags."""
    values: dict[str, object] = {}
    index = 0
    while index < len(arguments):
        argument = arguments[index]
        index += 1
        if argument == "--help":
            raise FlagError("")
        name, separator, text = argument.removeprefix("--").partition("=")
        flag = _FLAGS_BY_NAME.get(name) if argument.startswith("--") else None
        if flag is None:
            raise FlagError(f"unknown argument: {argument}")
        if flag.kind is bool:
            if separator and text not in ("true", "false"):
                raise FlagError(f"Couldn't interpret value ={text} for flag {name}.")
            if not separator and index < len(arguments) and arguments[index] in ("true", "false"):
                # TF would set the flag true and call "false" an unknown argument: refuse instead.
                raise FlagError(
                    f"bool flags take --{name}=true or --{name}=false, not '--{name} {arguments[index]}'"
                )
            values[name] = text != "false"
            continue
        if not separator:
            if index >= len(arguments):
                raise FlagError(f"flag --{name} needs a value: --{name}=VALUE")
            text = arguments[index]
            index += 1
        values[name] = _convert(flag, text)
    return _command_line(values)


def _convert(flag: Flag, text: str) -> object:
    error = FlagError(f"Couldn't interpret value {text} for flag {flag.name}.")
    if flag.kind is int:
        if not _INTEGER.fullmatch(text):
            raise error
        return int(text)
    if flag.kind is float:
        try:
            return float(text)
        except ValueError:
            raise error from None
    return text


def _command_line(values: dict[str, object]) -> CommandLine:
    options = ServerOptions()
    for name, value in values.items():
        flag = _FLAGS_BY_NAME[name]
        if flag.support == "implemented" and hasattr(options, name):
            setattr(options, name, value)
        elif value != flag.default and flag.support == "refused":
            raise FlagError(f"--{name} is not supported by the embedded model server; use TensorFlow Serving")
        elif value != flag.default and flag.support == "ignored":
            logger.warning(
                "--%s is accepted for compatibility but has no effect in the embedded model server", name
            )
    return CommandLine(options, show_version=bool(values.get("version", False)))
