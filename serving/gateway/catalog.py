"""Which models the gateway serves, and what it needs of each served version: input and output
keys, image shape, classes and preprocessing, its out-of-distribution score and explanation
signature if it has them, learned at run time from the model server's metadata and the version's assets.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serving.gateway import explanations, out_of_distribution
from serving.gateway.errors import ModelMisconfiguredError, ModelNotFoundError, ModelServerUnavailableError
from serving.gateway.explanations import ExplanationSignature
from serving.gateway.model_server_client import SIGNATURE_NAME, ModelServerClient
from serving.gateway.out_of_distribution import OutOfDistribution
from serving.gateway.preprocess import PreprocessingSpec
from serving.model_config import MODEL_NAME_PATTERN, RegistryError, parse_registry, require_model_list
from serving.protos.tensorflow.core.protobuf import meta_graph_pb2

logger = logging.getLogger(__name__)

__all__ = ["MODEL_NAME_PATTERN", "ModelCatalog", "ModelInfo"]
# A version in these states is on its way to AVAILABLE (model_status.py's names of TF Serving's states).
_LOADING_STATES = frozenset({"START", "LOADING"})


@dataclass(frozen=True)
class ModelInfo:
    """One served model version, as the gateway needs it."""

    name: str
    version: int
    input_key: str
    output_key: str
    spec: PreprocessingSpec
    classes: tuple[str, ...]
    test_accuracy: float | None = None  # the headline figure of the version's evaluation.json
    out_of_distribution: OutOfDistribution | None = None  # None: exported without a score
    explanation: ExplanationSignature | None = None  # None: exported without an explanation signature

    @property
    def output_keys(self) -> tuple[str, ...]:
        """serving_default's outputs that a prediction asks for (Predict's output_filter)."""
        if self.out_of_distribution is None:
            return (self.output_key,)
        return (self.output_key, self.out_of_distribution.output_key)


class ModelCatalog:
    """Which models exist, and for each served version its input key, shape, classes and spec.

    Which models: `names` when given, else those `config_file` (a TF Serving model config, the
    one the model server polls) lists, else every model folder under `base_path`; the file or
    the folder is re-read after `ttl` seconds, so a model added to either is served without a
    restart. Versions never change once exported, so (name, version) is cached for good; which
    version is "latest" (or carries a label) is re-asked after `ttl` seconds.
    """

    def __init__(self, client: ModelServerClient, base_path: str | Path, names: Sequence[str] = (),
                 ttl: float = 2.0, config_file: str | Path | None = None):
        self.client = client
        self.base_path = Path(base_path)
        self.configured_names = tuple(names)
        self.config_file = Path(config_file) if config_file else None
        self._config_problem = ""  # the last one logged, so a broken file is not logged every `ttl`
        self.ttl = ttl
        self._infos: dict[tuple[str, int], ModelInfo] = {}
        self._latest: dict[tuple[str, str | None], tuple[float, int]] = {}
        self._lock = threading.Lock()
        self._scanned: tuple[float, list[str]] | None = None

    def model_names(self) -> list[str]:
        if self.configured_names:
            return list(self.configured_names)
        # Every request checks its model name: read the file or the directory at most once per `ttl`.
        scanned = self._scanned
        if scanned is None or time.monotonic() - scanned[0] >= self.ttl:
            if self.config_file:
                names = self._read_config_file(self.config_file)
            else:
                names = self._scan_model_directories()
            scanned = (time.monotonic(), names)
            self._scanned = scanned
        return list(scanned[1])

    def _read_config_file(self, path: Path) -> list[str]:
        """The models the config file lists; while it cannot be read, the last list read (TF Serving
        keeps its old config too, so the gateway keeps serving what the model server serves)."""
        try:
            source = f"MODEL_CONFIG_FILE {path}"
            config = require_model_list(parse_registry(path.read_text(), source), source)
        except (OSError, UnicodeDecodeError, RegistryError) as error:
            problem = str(error)
            if not isinstance(error, RegistryError):
                problem = f"cannot read MODEL_CONFIG_FILE {path}: {error}"
            if problem != self._config_problem:
                logger.error("%s; serving the models it listed before", problem)
                self._config_problem = problem
            return list(self._scanned[1]) if self._scanned else []
        self._config_problem = ""
        return [model.name for model in config.model_config_list.config
                if MODEL_NAME_PATTERN.fullmatch(model.name)]

    def _scan_model_directories(self) -> list[str]:
        try:
            return sorted(
                path.name
                for path in self.base_path.iterdir()
                if path.is_dir() and MODEL_NAME_PATTERN.fullmatch(path.name)
                and any(p.name.isdigit() for p in path.iterdir())
            )
        except OSError:  # missing or unreadable: no models, as the readiness probe will say
            return []

    def check_name(self, name: str) -> None:
        # The name must be one the gateway serves before it is used anywhere, a path above all.
        if not MODEL_NAME_PATTERN.fullmatch(name) or name not in self.model_names():
            shown = repr(name[:64]) + ("..." if len(name) > 64 else "")
            available = ", ".join(self.model_names()) or "none"
            raise ModelNotFoundError(f"unknown model {shown}; available: {available}")

    def resolve(self, name: str, version: int | None = None, label: str | None = None) -> ModelInfo:
        """The ModelInfo of the version a request for (name, version | label | latest) goes to."""
        self.check_name(name)
        if version is None:
            key = (name, label)
            cached = self._latest.get(key)
            if cached and time.monotonic() - cached[0] < self.ttl:
                version = cached[1]
        if version is not None and (name, version) in self._infos:
            return self._infos[(name, version)]
        try:
            served_version, signatures = self.client.signatures(name, version, label)
        except ModelNotFoundError:
            if version is None and label is None:
                self._raise_unless_available(name)
            raise
        info = self._build_info(name, served_version, signatures)
        with self._lock:
            self._infos[(name, served_version)] = info
            if version is None:
                self._latest[(name, label)] = (time.monotonic(), served_version)
        return info

    def _raise_unless_available(self, name: str) -> None:
        """A model the gateway serves but the model server has no version of: one just added to
        the config, which the model server has yet to read or load, answers 503, not 404."""
        try:
            versions = self.client.status(name)
        except ModelNotFoundError:
            versions = []  # not in the model server's config yet (it re-reads the file every few seconds)
        states = {v.state for v in versions}
        if "AVAILABLE" in states:
            return
        if not states or states & _LOADING_STATES:
            where = ", ".join(sorted(states)) or "not yet read from the model config"
            raise ModelServerUnavailableError(
                f"model '{name}' is not loaded yet ({where}); retry in a few seconds", code="model_loading")
        errors = "; ".join(sorted({v.error for v in versions if v.error})) or ", ".join(sorted(states))
        raise ModelServerUnavailableError(f"model '{name}' has no version available: {errors}",
                                          code="model_unavailable")

    def forget(self, name: str) -> None:
        """Drop cached 'latest' answers, e.g. after the model server said a version is gone."""
        with self._lock:
            for key in [k for k in self._latest if k[0] == name]:
                del self._latest[key]

    def _build_info(self, name: str, version: int,
                    signatures: Mapping[str, meta_graph_pb2.SignatureDef]) -> ModelInfo:
        assets = self.base_path / name / str(version) / "assets"
        signature = signatures[SIGNATURE_NAME]
        spec_values = _read_json(assets / "preprocessing.json")
        if not isinstance(spec_values, dict):
            raise ModelMisconfiguredError(
                f"model '{name}' version {version}: assets/preprocessing.json is not a JSON object")
        input_key = _single_key(signature.inputs, spec_values.get("input_key"), "input", name)
        # The score beside the probabilities is never the output to rank classes by.
        outputs = {key: output for key, output in signature.outputs.items()
                   if key != out_of_distribution.OUTPUT_KEY} or dict(signature.outputs)
        output_key = _single_key(outputs, spec_values.get("output_key"), "output", name)
        dims = [d.size for d in signature.inputs[input_key].tensor_shape.dim]
        if len(dims) != 4:
            raise ModelNotFoundError(
                f"model '{name}' takes input of rank {len(dims)}, not an image batch [N,H,W,C]")
        try:
            spec = PreprocessingSpec.from_mapping(spec_values, height=dims[1], width=dims[2],
                                                  channels=dims[3])
        except (TypeError, ValueError) as error:
            raise ModelMisconfiguredError(
                f"model '{name}' version {version}: assets/preprocessing.json cannot be used: {error}"
            ) from None
        output_dims = [d.size for d in signature.outputs[output_key].tensor_shape.dim]
        class_count = max(output_dims[-1], 0) if output_dims else 0  # -1: unknown until it answers
        classes = _read_labels(assets / "labels.txt") or tuple(str(i) for i in range(class_count))
        evaluation = _read_json(self.base_path / name / str(version) / "assets.extra" / "evaluation.json")
        figure = evaluation.get("test_accuracy") if isinstance(evaluation, dict) else None
        accuracy = None
        if isinstance(figure, int | float) and not isinstance(figure, bool) and 0 <= figure <= 1:
            accuracy = float(figure)
        where = f"model '{name}' version {version}"
        ood_asset = _read_json(assets / out_of_distribution.ASSET)
        ood = out_of_distribution.find(signature.outputs, ood_asset, where)
        explanation = explanations.find(signatures, _read_json(assets / explanations.ASSET), input_key, where)
        return ModelInfo(name, version, input_key, output_key, spec, classes, accuracy, ood, explanation)


def _read_json(path: Path) -> Any:
    """The file's JSON value; {} when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        logger.warning("ignoring unreadable %s: %s", path, error)
        return {}


def _read_labels(path: Path) -> tuple[str, ...]:
    try:
        return tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    except (OSError, UnicodeDecodeError):  # unreadable: class indices as labels, as without the file
        return ()


def _single_key(tensors: Mapping[str, Any], preferred: object, what: str, name: str) -> str:
    if isinstance(preferred, str) and preferred in tensors:
        return preferred
    if len(tensors) == 1:
        only: str = next(iter(tensors))
        return only
    raise ModelNotFoundError(
        f"model '{name}' has {len(tensors)} {what}s ({sorted(tensors)}); cannot tell which to use")

