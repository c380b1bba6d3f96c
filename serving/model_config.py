"""The models folder's own TF Serving model config, `<models_dir>/models.config`: the registry of
every model exported there. Training adds each model it exports (`register_model`); TF Serving in
the containers reads it with --model_config_file polling, and `make serve` serves it (`served_config`).

Its base paths are where the containers mount the folder (/models/<name>); `make serve` maps them
to the folder itself. Every change is atomic (a whole new file renamed into place) and made under a
lock on the folder, so two trainings that finish together both land and no reader sees half a file.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import os
import re
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from google.protobuf import text_format

from serving.protos.tensorflow_serving.config import model_server_config_pb2

ModelServerConfig = model_server_config_pb2.ModelServerConfig

REGISTRY_NAME = "models.config"
LOCK_NAME = ".models.config.lock"
# Where docker/compose.yaml and docker/k8s mount the models folder in the TF Serving container.
CONTAINER_MODELS_DIR = "/models"
SAVED_MODEL_FILES = ("saved_model.pb", "saved_model.pbtxt")
# Names a model may have: a folder name, a URL path segment and a Prometheus label value alike.
MODEL_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
HEADER = (
    "# The models exported into this folder, for TensorFlow Serving (text format of\n"
    "# tensorflow.serving.ModelServerConfig). Training adds each model it exports; change it with\n"
    "# `python -m serving.model_config --help` or by hand (comments are not kept). base_path is\n"
    f"# where the containers mount this folder ({CONTAINER_MODELS_DIR}); `make serve` maps it here.\n"
    "# TF Serving and `make serve` re-read it while they run: docs/model-server.md.\n"
)


class RegistryError(ValueError):
    """The registry cannot be read or changed; the message says what to fix."""


def registry_path(models_dir: str | Path) -> Path:
    return Path(models_dir) / REGISTRY_NAME


def has_exported_version(model_dir: Path) -> bool:
    """Whether `model_dir` holds a version TF Serving can load: `<integer>/saved_model.pb[txt]`."""
    try:
        return any(path.name.isdigit() and any((path / name).is_file() for name in SAVED_MODEL_FILES)
                   for path in model_dir.iterdir())
    except OSError:
        return False


def parse_registry(text: str, source: str) -> ModelServerConfig:
    """A registry's text as TF Serving reads it; RegistryError where TF Serving would refuse it."""
    try:
        config = text_format.Parse(text, ModelServerConfig())
    except text_format.ParseError as error:
        raise RegistryError(f"{source} is not a valid TF Serving model config ({error}): "
                            "fix it or remove it") from None
    if config.WhichOneof("config") == "custom_model_config":
        raise RegistryError(f"{source} has a custom_model_config; a model_config_list is needed")
    names = [model.name for model in config.model_config_list.config]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise RegistryError(f"{source} lists {', '.join(repeated)} more than once: keep one entry each")
    return config


def require_model_list(config: ModelServerConfig, source: str) -> ModelServerConfig:
    """`config`, unless it is empty: TF Serving takes an empty config as no change ("Taking no action
    for empty config"), and so do the servers that follow a registry (RegistryError: keep the last)."""
    if config.WhichOneof("config") is None:  # an editor saving in place truncates the file first
        raise RegistryError(f"{source} is empty (no model_config_list): save it whole, or list models with "
                            "`python -m serving.model_config --add NAME`")
    return config


def read_registry(models_dir: str | Path) -> ModelServerConfig | None:
    """The registry of `models_dir`; None when there is none yet."""
    path = registry_path(models_dir)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as error:
        raise RegistryError(f"cannot read {path}: {error}") from None
    return parse_registry(text, str(path))


def registered_names(models_dir: str | Path) -> list[str]:
    config = read_registry(models_dir)
    return [] if config is None else [model.name for model in config.model_config_list.config]


def register_model(models_dir: str | Path, name: str) -> None:
    """List model `name` in the registry of `models_dir` unless it is listed already.

    Called after an export: the model's folder must hold an exported version, since TF Serving
    waits for every listed model. A new registry also lists the models exported there before it.
    """
    models_dir = Path(models_dir)
    check_model_name(name)
    if not has_exported_version(models_dir / name):
        raise RegistryError(f"{models_dir / name} holds no exported version (<integer>/saved_model.pb): "
                            "export the model before registering it")

    def add(config: ModelServerConfig) -> bool:
        if name in {model.name for model in config.model_config_list.config}:
            return False
        _add_entry(config, name)
        return True

    _change_registry(models_dir, add)


def unregister_model(models_dir: str | Path, name: str) -> bool:
    """Take model `name` out of the registry (its folder stays); whether it was listed."""
    def remove(config: ModelServerConfig) -> bool:
        models = config.model_config_list.config
        kept = [model for model in models if model.name != name]
        if len(kept) == len(models):
            return False
        del models[:]
        models.extend(kept)
        return True

    return _change_registry(Path(models_dir), remove, create=False)


def check_model_name(name: str) -> None:
    if not MODEL_NAME_PATTERN.fullmatch(name):
        raise RegistryError(f"{name[:64]!r} is not a valid model name: letters, digits, '_', '.' and '-', "
                            "starting with a letter or digit, at most 128 characters")


def _add_entry(config: ModelServerConfig, name: str) -> None:
    model = config.model_config_list.config.add()
    model.name = name
    model.base_path = f"{CONTAINER_MODELS_DIR}/{name}"
    model.model_platform = "tensorflow"
    model.model_version_policy.latest.num_versions = 1  # TF Serving's default, spelt out for editing


def _change_registry(models_dir: Path, change: Callable[[ModelServerConfig], bool],
                     create: bool = True) -> bool:
    """Apply `change` to the registry under the folder's lock; write it back if it changed anything."""
    if not models_dir.is_dir():
        raise RegistryError(f"{models_dir} is not a folder")
    with _locked(models_dir):
        config = read_registry(models_dir)
        if config is None:
            if not create:
                return False
            config = ModelServerConfig()
            # The models exported before the registry existed stay served.
            for earlier in sorted(path.name for path in models_dir.iterdir()
                                  if MODEL_NAME_PATTERN.fullmatch(path.name) and has_exported_version(path)):
                _add_entry(config, earlier)
            config.model_config_list.SetInParent()  # an empty list is still a list
        changed = change(config)
        if changed or not registry_path(models_dir).exists():
            write_config_atomically(registry_path(models_dir), config, HEADER)
        return changed


@contextlib.contextmanager
def _locked(models_dir: Path) -> Iterator[None]:
    with open(models_dir / LOCK_NAME, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process dies
        yield


def write_config_atomically(path: Path, config: ModelServerConfig, header: str = "") -> None:
    """Write `config` to `path` as a whole new file renamed into place: a reader (TF Serving's
    poll, the gateway) sees the old file or the new one, never part of one, even after a crash."""
    text = header + text_format.MessageToString(config)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "w") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(temporary, 0o644)  # mkstemp's 0600 would hide it from a server running as another user
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)  # the rename itself survives a crash
    finally:
        os.close(directory)


def local_base_path(base_path: str, models_dir: Path) -> str:
    """A registry base_path as seen outside the containers: /models/<x> becomes <models_dir>/<x>."""
    prefix = CONTAINER_MODELS_DIR + "/"
    if base_path.startswith(prefix):
        return str((models_dir / base_path.removeprefix(prefix)).resolve())
    return base_path


def served_config(models_dir: str | Path) -> ModelServerConfig | None:
    """What `make serve` serves from `models_dir`: the registry's models with local base paths,
    leaving out any without an exported version yet (TF Serving would wait for it, and the
    embedded server's poll of the others with it). None when there is no registry; RegistryError
    when it is empty, which TF Serving takes as no change ("Taking no action for empty config")."""
    models_dir = Path(models_dir)
    config = read_registry(models_dir)
    if config is None:
        return None
    require_model_list(config, str(registry_path(models_dir)))
    models = config.model_config_list.config
    kept = []
    for model in models:
        model.base_path = local_base_path(model.base_path, models_dir)
        if has_exported_version(Path(model.base_path)):
            kept.append(model)
    del models[:]
    models.extend(kept)
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m serving.model_config",
        description="List or change the models a models folder serves (its models.config).")
    parser.add_argument("--models-dir", default=os.environ.get("MODEL_BASE_PATH", "models"))
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--list", action="store_true", help="print each listed model and its base_path")
    action.add_argument("--add", metavar="NAME", help="list an exported model (creates the file)")
    action.add_argument("--remove", metavar="NAME", help="stop serving a model (its folder stays)")
    args = parser.parse_args(argv)
    try:
        if args.add:
            register_model(args.models_dir, args.add)
        elif args.remove and not unregister_model(args.models_dir, args.remove):
            raise RegistryError(f"{args.remove[:64]!r} is not listed in {registry_path(args.models_dir)}")
        config = read_registry(args.models_dir)
    except (RegistryError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if config is None:
        print(f"{registry_path(args.models_dir)} does not exist yet: training writes it (or --add NAME)",
              file=sys.stderr)
        return 0
    for model in config.model_config_list.config:
        print(f"{model.name}\t{model.base_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
