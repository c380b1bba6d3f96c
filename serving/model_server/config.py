"""The served models' configuration: TF Serving's ModelServerConfig, read and checked.

`--model_config_file` is the same text-format protobuf TF Serving reads
(`model_config_list { config { name base_path model_platform model_version_policy
version_labels } }`); `--model_name` + `--model_base_path` build the same message.
"""

from __future__ import annotations

import logging
import os
from urllib.parse import urlparse

from serving.model_server.errors import InvalidArgument
from serving.model_server.text_proto import parse_text_proto, read_text_proto
from serving.protos.tensorflow_serving.config import model_server_config_pb2

logger = logging.getLogger(__name__)

TENSORFLOW_PLATFORM = "tensorflow"  # model_servers/model_platform_types.h

ModelServerConfig = model_server_config_pb2.ModelServerConfig
ModelConfig = model_server_config_pb2.ModelConfig


def build_single_model_config(model_name: str, model_base_path: str) -> ModelServerConfig:
    """The config `--model_name` and `--model_base_path` stand for (server.cc)."""
    logger.info(
        "Building single TensorFlow model file config:  model_name: %s model_base_path: %s",
        model_name,
        model_base_path,
    )
    config = ModelServerConfig()
    model = config.model_config_list.config.add()
    model.name = model_name
    model.base_path = model_base_path
    model.model_platform = TENSORFLOW_PLATFORM
    return config


def parse_model_server_config(text: str, source: str = "<string>") -> ModelServerConfig:
    """Parse text-format ModelServerConfig; InvalidArgument names `source` as TF Serving does."""
    return parse_text_proto(text, ModelServerConfig(), source)


def read_model_server_config(path: str) -> ModelServerConfig:
    """Read `--model_config_file`: NOT_FOUND if unreadable, INVALID_ARGUMENT if malformed."""
    return read_text_proto(path, ModelServerConfig())


def _is_relative_path(uri: str) -> bool:
    parsed = urlparse(uri)
    return not parsed.scheme and not parsed.netloc and not os.path.isabs(uri)


def validate_model_server_config(config: ModelServerConfig) -> ModelServerConfig:
    """Check a config as ServerCore::ReloadConfig does; return it with base paths made absolute.

    TF Serving rejects relative base paths; here they are resolved against the current
    directory (a convenience for `make serve`), with a warning that TF Serving would not.
    """
    which = config.WhichOneof("config")
    if which is None:
        return config
    if which != "model_config_list":
        raise InvalidArgument("Invalid ServerModelConfig")
    resolved = ModelServerConfig()
    resolved.CopyFrom(config)
    seen_names: set[str] = set()
    for model in resolved.model_config_list.config:
        if model.name in seen_names:
            raise InvalidArgument(f"Illegal to list model {model.name} multiple times in config list")
        seen_names.add(model.name)
        _check_platform(model)
        if _is_relative_path(model.base_path):
            absolute = os.path.abspath(model.base_path)
            logger.warning(
                "Model %s has a relative base_path %r; resolved to %s. TensorFlow Serving "
                'requires absolute paths ("Expected model %s to have an absolute path or URI").',
                model.name,
                model.base_path,
                absolute,
                model.name,
            )
            model.base_path = absolute
        elif urlparse(model.base_path).scheme not in ("", "file"):
            raise InvalidArgument(
                f"Model {model.name} has base_path {model.base_path}: the embedded model server "
                "reads only local paths"
            )
    return resolved


def _check_platform(model: ModelConfig) -> None:
    # server_core.cc GetPlatform() and CreateStoragePathRoutes(), same messages.
    if model.model_type != model_server_config_pb2.MODEL_TYPE_UNSPECIFIED:
        if model.model_platform:
            raise InvalidArgument(
                "Illegal setting both ModelServerConfig::model_type (deprecated) and "
                f"ModelServerConfig::model_platform, model name is {model.name}"
            )
        if model.model_type != model_server_config_pb2.TENSORFLOW:
            raise InvalidArgument(f"ModelServerConfig::model_type choice {model.model_type} not supported.")
        logger.warning(
            "Deprecated ModelServerConfig::model_type field used. Prefer ModelServerConfig::model_platform."
        )
        return
    if not model.model_platform:
        raise InvalidArgument(
            "Illegal setting neither ModelServerConfig::model_type (deprecated) nor "
            f"ModelServerConfig::model_platform, model name is {model.name}"
        )
    if model.model_platform != TENSORFLOW_PLATFORM:
        raise InvalidArgument(f"Model {model.name} requests unsupported platform {model.model_platform}")


def load_config(model_config_file: str, model_name: str, model_base_path: str) -> ModelServerConfig:
    """The config a command line asks for: the file when given (name and path ignored)."""
    if model_config_file:
        return read_model_server_config(model_config_file)
    return build_single_model_config(model_name, model_base_path)


__all__ = [
    "ModelConfig",
    "ModelServerConfig",
    "build_single_model_config",
    "load_config",
    "parse_model_server_config",
    "read_model_server_config",
    "validate_model_server_config",
]
