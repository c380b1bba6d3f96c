"""The model server's transport-agnostic core: Predict, Classify, Regress, MultiInference, metadata, status.

Plain Python in, plain Python out; failures raise `errors.ModelServerError` with TF
Serving's code and message. The gRPC and REST edges only translate to and from this.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from typing import TypeVar

import numpy as np

from serving.model_server import inference
from serving.model_server.config import ModelServerConfig
from serving.model_server.errors import InvalidArgument, NotFound
from serving.model_server.manager import ModelManager, VersionStatus
from serving.model_server.multi_inference import run_multi_inference
from serving.model_server.predict import DEFAULT_SIGNATURE, run_predict
from serving.protos.tensorflow.core.protobuf import meta_graph_pb2
from serving.protos.tensorflow_serving.apis import (
    classification_pb2,
    get_model_metadata_pb2,
    get_model_status_pb2,
    inference_pb2,
    input_pb2,
    model_pb2,
    regression_pb2,
)

SIGNATURE_DEF_FIELD = "signature_def"  # GetModelMetadataImpl::kSignatureDef

RequestValue = TypeVar("RequestValue")


@dataclasses.dataclass(frozen=True)
class PredictResult:
    model_name: str
    version: int
    signature_name: str
    outputs: dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class ClassifyResult:
    model_spec: model_pb2.ModelSpec  # name, version and signature name used
    result: classification_pb2.ClassificationResult


@dataclasses.dataclass(frozen=True)
class RegressResult:
    model_spec: model_pb2.ModelSpec
    result: regression_pb2.RegressionResult


@dataclasses.dataclass(frozen=True)
class ModelMetadata:
    model_name: str
    version: int
    signature_defs: dict[str, meta_graph_pb2.SignatureDef]

    def signature_def_map(self) -> get_model_metadata_pb2.SignatureDefMap:
        """The `signature_def` metadata field as both APIs send it."""
        signature_map = get_model_metadata_pb2.SignatureDefMap()
        for key, signature in self.signature_defs.items():
            signature_map.signature_def[key].CopyFrom(signature)
        return signature_map


class ModelServerCore:
    """What every edge calls; one per server. Methods that run a model are coroutines.

    Call them on the server's event loop: a batched run awaits its batch there, and an
    unbatched one runs on `executor` (None: the loop's default executor).
    """

    def __init__(self, manager: ModelManager, executor: Executor | None = None) -> None:
        self.manager = manager
        self.executor = executor

    async def predict(
        self,
        model_name: str,
        inputs: Mapping[str, RequestValue],
        *,
        version: int | None = None,
        version_label: str | None = None,
        signature_name: str = "",
        output_filter: Sequence[str] = (),
        decode: Callable[[RequestValue], object] = np.asarray,
    ) -> PredictResult:
        """Run a signature of the requested (default: latest) version on `inputs`.

        `decode` turns each request value into an array (e.g. a TensorProto decoder);
        it runs where TF Serving parses tensors, so errors come in TF Serving's order.
        A batched run waits for its batch without holding a thread.
        """
        with self.manager.servable(model_name, version, version_label) as bundle:
            used_signature, outputs = await run_predict(
                bundle,
                signature_name,
                inputs,
                output_filter,
                decode,
                self.manager.options.enable_signature_method_name_check,
                self.executor,
            )
            return PredictResult(model_name, bundle.version, used_signature, outputs)

    async def classify(
        self,
        model_name: str,
        model_input: input_pb2.Input,
        *,
        version: int | None = None,
        version_label: str | None = None,
        signature_name: str = "",
    ) -> ClassifyResult:
        """Classify the tf.Examples of `model_input` with a classification signature."""
        with self.manager.servable(model_name, version, version_label) as bundle:
            check = self.manager.options.enable_signature_method_name_check
            result = await inference.run_classify(bundle, signature_name, model_input, check, self.executor)
            return ClassifyResult(inference.model_spec(model_name, signature_name, bundle.version), result)

    async def regress(
        self,
        model_name: str,
        model_input: input_pb2.Input,
        *,
        version: int | None = None,
        version_label: str | None = None,
        signature_name: str = "",
    ) -> RegressResult:
        """Regress the tf.Examples of `model_input` with a regression signature."""
        with self.manager.servable(model_name, version, version_label) as bundle:
            check = self.manager.options.enable_signature_method_name_check
            result = await inference.run_regress(bundle, signature_name, model_input, check, self.executor)
            return RegressResult(inference.model_spec(model_name, signature_name, bundle.version), result)

    async def multi_inference(
        self, request: inference_pb2.MultiInferenceRequest
    ) -> inference_pb2.MultiInferenceResponse:
        """Several classify/regress tasks on one input; the first task's ModelSpec picks the version."""
        spec = request.tasks[0].model_spec if request.tasks else model_pb2.ModelSpec()
        choice = spec.WhichOneof("version_choice")
        with self.manager.servable(
            spec.name,
            spec.version.value if choice == "version" else None,
            spec.version_label if choice == "version_label" else None,
        ) as bundle:
            check = self.manager.options.enable_signature_method_name_check
            return await run_multi_inference(bundle, request, check, self.executor)

    def signature_inputs(
        self,
        model_name: str,
        signature_name: str = "",
        *,
        version: int | None = None,
        version_label: str | None = None,
    ) -> dict[str, meta_graph_pb2.TensorInfo]:
        """A signature's inputs by alias, which the REST API needs to read JSON into tensors."""
        with self.manager.servable(model_name, version, version_label) as bundle:
            name = signature_name or DEFAULT_SIGNATURE
            signature = bundle.signature_defs.get(name)
            if signature is None:
                # HttpRestApiHandler::GetInfoMap(), not Predict's FAILED_PRECONDITION.
                raise InvalidArgument(f'Serving signature name: "{name}" not found in signature def')
            return dict(signature.inputs)

    def get_model_metadata(
        self,
        model_name: str,
        metadata_fields: Sequence[str],
        *,
        version: int | None = None,
        version_label: str | None = None,
    ) -> ModelMetadata:
        """The version's SignatureDefs, exactly as its MetaGraphDef holds them."""
        if not metadata_fields:
            raise InvalidArgument("GetModelMetadataRequest must specify at least one metadata_field")
        for field in metadata_fields:
            if field != SIGNATURE_DEF_FIELD:
                raise InvalidArgument(f"Metadata field {field} is not supported")
        with self.manager.servable(model_name, version, version_label) as bundle:
            return ModelMetadata(bundle.model_name, bundle.version, dict(bundle.signature_defs))

    def get_model_status(self, model_name: str, version: int | None = None) -> dict[int, VersionStatus]:
        """State of one version, or of every version the server has known, newest first."""
        states = self.manager.version_states(model_name)
        if version is not None:
            if version not in states:
                raise NotFound(f"Could not find version {version} of model {model_name}")
            return {version: states[version]}
        if not states:
            raise NotFound(f"Could not find any versions of model {model_name}")
        return states

    def reload_config(self, config: ModelServerConfig) -> None:
        """Serve what `config` lists from now on; returns once new models are available."""
        if config.WhichOneof("config") != "model_config_list":
            raise InvalidArgument(
                "ServerModelConfig type not supported by HandleReloadConfigRequest. "
                "Only ModelConfigList is currently supported"
            )
        self.manager.reload_config(config)


def model_status_response(states: dict[int, VersionStatus]) -> get_model_status_pb2.GetModelStatusResponse:
    """GetModelStatusResponse for `get_model_status`'s answer, as both APIs send it."""
    response = get_model_status_pb2.GetModelStatusResponse()
    for number, status in states.items():
        entry = response.model_version_status.add(version=number, state=int(status.state))
        entry.status.SetInParent()  # TF Serving always sets it, OK included
        if status.error is not None:
            entry.status.error_code = status.error.code.value[0]
            entry.status.error_message = status.error.message
    return response
