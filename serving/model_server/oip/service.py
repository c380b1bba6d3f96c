"""The Open Inference Protocol's transport-agnostic half: readiness, metadata, infer.

Plain Python in and out, over ModelServerCore: infer is the core's predict (same version
policy, validation, batching, metrics of the run) plus Triton's classification extension;
metadata is the version's `serving_default` signature in v2 terms. A v2 version string is a
version number or one of the model's version labels (`stable`, `canary`). rest.py and
grpc_service.py only translate to and from this.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import tensorflow as tf

from serving.model_server.core import ModelServerCore
from serving.model_server.errors import InvalidArgument, NotFound
from serving.model_server.manager import VersionState
from serving.model_server.oip import tensors
from serving.model_server.predict import DEFAULT_SIGNATURE
from serving.protos.tensorflow.core.protobuf import meta_graph_pb2

SERVER_NAME = "pixelgate"
# What ServerMetadata announces, in Triton's names for the extensions implemented here.
EXTENSIONS = ("binary_tensor_data", "classification")
PLATFORM = "tensorflow_savedmodel"  # Triton's name for a SavedModel backend


@dataclasses.dataclass(frozen=True)
class RequestedOutput:
    name: str
    classification: int = 0  # > 0: answer the top k classes as "score:index:label" strings


@dataclasses.dataclass(frozen=True)
class InferResult:
    model_name: str
    version: int
    outputs: list[tuple[str, np.ndarray]]  # in the order asked for, else by name


class OipService:
    """What both v2 edges call; one per server. `infer` is a coroutine, as the core's predict."""

    def __init__(self, core: ModelServerCore) -> None:
        self.core = core
        self.server_version = tf.__version__  # as `--version` prints it: the TensorFlow library's

    def server_metadata(self) -> dict[str, Any]:
        return {"name": SERVER_NAME, "version": self.server_version, "extensions": list(EXTENSIONS)}

    def server_ready(self) -> bool:
        """Every configured model has a version AVAILABLE (what the gateway's /readyz asks too)."""
        names = [model.name for model in self.core.manager.config.model_config_list.config]
        return all(self._available_versions(name) for name in names)

    def model_ready(self, model_name: str, version: str = "") -> bool:
        """Whether the version (default: any) serves; NotFound for a model the server never had."""
        states = self.core.get_model_status(model_name)
        available = self._available_versions(model_name)
        if not version:
            return bool(available)
        number = self._version_number(model_name, version)
        if number not in states:
            raise NotFound(f"Could not find version {version} of model {model_name}")
        return number in available

    def model_metadata(self, model_name: str, version: str = "") -> dict[str, Any]:
        """Name, available versions, platform and the default signature's tensors."""
        metadata = self.core.get_model_metadata(
            model_name,
            ["signature_def"],
            version=self._version_number(model_name, version) if version else None,
        )
        signature = metadata.signature_defs.get(DEFAULT_SIGNATURE, meta_graph_pb2.SignatureDef())
        return {
            "name": metadata.model_name,
            "versions": [str(number) for number in sorted(self._available_versions(model_name))],
            "platform": PLATFORM,
            "inputs": _tensors_metadata(signature.inputs),
            "outputs": _tensors_metadata(signature.outputs),
        }

    async def infer(
        self,
        model_name: str,
        version: str,
        inputs: Mapping[str, np.ndarray],
        outputs: Sequence[RequestedOutput] = (),
    ) -> InferResult:
        """Run the default signature through the core's predict; `outputs` selects and classifies."""
        number = self._version_number(model_name, version) if version else None
        # Held across the run: classification reads the labels of the very version that answered.
        with self.core.manager.servable(model_name, number) as bundle:
            result = await self.core.predict(
                model_name, inputs, version=bundle.version, output_filter=[output.name for output in outputs]
            )
            answers = list(result.outputs.items())
            classified = {output.name: output.classification for output in outputs if output.classification}
            if classified:
                labels = tensors.read_labels(bundle.export_dir)
                answers = [
                    (
                        name,
                        tensors.classify(name, value, classified[name], labels)
                        if name in classified
                        else value,
                    )
                    for name, value in answers
                ]
        return InferResult(result.model_name, result.version, answers)

    def _version_number(self, model_name: str, version: str) -> int:
        """A v2 version string: a TF Serving version number, or one of the model's version labels."""
        if version.isascii() and version.isdigit() and len(version) <= 18:
            return int(version)
        try:
            with self.core.manager.servable(model_name, version_label=version) as bundle:
                return bundle.version
        except InvalidArgument as error:  # an unknown label: for v2, an unknown version
            raise NotFound(error.message) from None

    def _available_versions(self, model_name: str) -> list[int]:
        states = self.core.manager.version_states(model_name)
        return [number for number, status in states.items() if status.state == VersionState.AVAILABLE]


def _tensors_metadata(infos: Mapping[str, meta_graph_pb2.TensorInfo]) -> list[dict[str, Any]]:
    """Signature tensors as v2 TensorMetadata: alias, datatype, shape with -1 for unknown sizes."""
    return [
        {
            "name": alias,
            "datatype": tensors.DATATYPE_BY_TF.get(info.dtype, "INVALID"),
            "shape": [] if info.tensor_shape.unknown_rank else [dim.size for dim in info.tensor_shape.dim],
        }
        for alias, info in sorted(infos.items())
    ]
