"""MultiInference: several Classify/Regress tasks over one input in one session run.

TF Serving's TensorFlowMultiInferenceRunner (servables/tensorflow/multi_inference.cc):
its checks and messages, one fetch list in std::set order, one result per task.
"""

from __future__ import annotations

from concurrent.futures import Executor

from serving.model_server.bundle import SavedModelBundle
from serving.model_server.errors import InvalidArgument, Unimplemented
from serving.model_server.inference import (
    classification_result,
    classification_tensor_names,
    model_spec,
    regression_result,
    regression_tensor_names,
    serialized_examples,
)
from serving.model_server.predict import CLASSIFY_METHOD, DEFAULT_SIGNATURE, REGRESS_METHOD
from serving.protos.tensorflow_serving.apis import inference_pb2


async def run_multi_inference(
    bundle: SavedModelBundle,
    request: inference_pb2.MultiInferenceRequest,
    check_method_name: bool = False,
    executor: Executor | None = None,
) -> inference_pb2.MultiInferenceResponse:
    """TensorFlowMultiInferenceRunner::Infer(): several classify/regress tasks, one session run."""
    model_name = ""
    signature_names: set[str] = set()
    input_names: set[str] = set()
    output_names: set[str] = set()
    for task in request.tasks:
        if not task.model_spec.name:
            raise InvalidArgument("Found ModelSpec with an empty model name.")
        if not model_name:
            model_name = task.model_spec.name
        elif model_name != task.model_spec.name:
            raise InvalidArgument(
                "All ModelSpecs in a MultiInferenceRequest must access the same model name."
            )
        signature_name = task.model_spec.signature_name or DEFAULT_SIGNATURE
        if signature_name in signature_names:
            raise InvalidArgument(f"Duplicate evaluation of signature: {signature_name}")
        signature_names.add(signature_name)
        signature = bundle.signature_defs.get(signature_name)
        if signature is None:
            raise InvalidArgument(f"Requested signature not found in model graph: {signature_name}")
        if task.method_name == CLASSIFY_METHOD:
            input_name, names = classification_tensor_names(signature, check_method_name)
        elif task.method_name == REGRESS_METHOD:
            input_name, names = regression_tensor_names(signature, check_method_name)
        else:
            raise Unimplemented(f"Unsupported signature method_name: {task.method_name}")
        input_names.add(input_name)
        output_names.update(names)

    fetches = sorted(output_names)  # std::set order, as the C++ builds its fetch list
    examples = serialized_examples(request.input)
    outputs = await bundle.run([(name, examples) for name in sorted(input_names)], fetches, executor)

    response = inference_pb2.MultiInferenceResponse()
    for task in request.tasks:
        signature = bundle.signature_defs[task.model_spec.signature_name or DEFAULT_SIGNATURE]
        result = response.results.add()
        if task.method_name == CLASSIFY_METHOD:
            classified = classification_result(signature, len(examples), fetches, outputs)
            result.classification_result.CopyFrom(classified)
        else:
            result.regression_result.CopyFrom(regression_result(signature, len(examples), fetches, outputs))
        spec = task.model_spec
        result.model_spec.CopyFrom(model_spec(spec.name, spec.signature_name, bundle.version))
    return response
