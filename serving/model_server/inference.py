"""Classify and Regress against one loaded version, as TF Serving runs them (multi_inference.py
combines them).

tf.Example inputs are serialized into one DT_STRING [N] tensor (util.cc's
InputToSerializedExampleTensor: context bytes + example bytes, which protobuf merges),
fed to the signature's `inputs`, and the outputs checked and shaped into results
(classifier.cc, regressor.cc), check for check and message for message.
"""

from __future__ import annotations

from concurrent.futures import Executor

import numpy as np
from google.protobuf import text_format

from serving.model_server import metrics
from serving.model_server.bundle import SavedModelBundle
from serving.model_server.errors import FailedPrecondition, InvalidArgument
from serving.model_server.predict import CLASSIFY_METHOD, DEFAULT_SIGNATURE, REGRESS_METHOD
from serving.model_server.tensor_encoding import data_type
from serving.protos.tensorflow.core.framework import types_pb2
from serving.protos.tensorflow.core.protobuf import meta_graph_pb2
from serving.protos.tensorflow_serving.apis import (
    classification_pb2,
    input_pb2,
    model_pb2,
    regression_pb2,
)
from serving.tensors import shape_string

# tensorflow/cc/saved_model/signature_constants.h
CLASSIFY_INPUTS = "inputs"
CLASSIFY_OUTPUT_CLASSES = "classes"
CLASSIFY_OUTPUT_SCORES = "scores"
REGRESS_INPUTS = "inputs"
REGRESS_OUTPUTS = "outputs"


def serialized_examples(model_input: input_pb2.Input) -> np.ndarray:
    """The Input as a DT_STRING [N] tensor of serialized tf.Examples; INVALID_ARGUMENT if empty."""
    kind = model_input.WhichOneof("kind")
    if kind == "example_list":
        serialized = [example.SerializeToString() for example in model_input.example_list.examples]
    elif kind == "example_list_with_context":
        with_context = model_input.example_list_with_context
        # Concatenated messages merge: the context's features join each example's.
        context = with_context.context.SerializeToString()
        serialized = [context + example.SerializeToString() for example in with_context.examples]
    else:
        serialized = []
    if not serialized:
        raise InvalidArgument("Input is empty.")
    array = np.empty(len(serialized), dtype=object)
    array[:] = serialized
    return array


def model_spec(name: str, signature_name: str, version: int) -> model_pb2.ModelSpec:
    """MakeModelSpec(): the spec an answer carries, with the signature name made explicit."""
    spec = model_pb2.ModelSpec(name=name, signature_name=signature_name or DEFAULT_SIGNATURE)
    spec.version.value = version
    return spec


# Classification ------------------------------------------------------------------------


def classification_signature(
    bundle: SavedModelBundle, signature_name: str, check_method_name: bool
) -> meta_graph_pb2.SignatureDef:
    """GetClassificationSignatureDef(): the named (default: serving_default) signature, checked."""
    signature = _signature(bundle, signature_name)
    if check_method_name:
        _check_method_name(signature, CLASSIFY_METHOD, "classification")
    else:
        classification_tensor_names(signature)
    return signature


def classification_tensor_names(
    signature: meta_graph_pb2.SignatureDef, check_method_name: bool = False
) -> tuple[str, list[str]]:
    """PreProcessClassification(): the input tensor name and the classes/scores tensor names."""
    if check_method_name:
        _check_method_name(signature, CLASSIFY_METHOD, "classification")
    if len(signature.inputs) != 1:
        raise InvalidArgument("Expected one input Tensor.")
    if len(signature.outputs) not in (1, 2):
        raise InvalidArgument(f"Expected one or two output Tensors, found {len(signature.outputs)}")
    if CLASSIFY_INPUTS not in signature.inputs:
        raise InvalidArgument(f"No classification inputs found in SignatureDef: {_debug_string(signature)}")
    outputs = [
        signature.outputs[key].name
        for key in (CLASSIFY_OUTPUT_CLASSES, CLASSIFY_OUTPUT_SCORES)
        if key in signature.outputs
    ]
    if not outputs:
        raise InvalidArgument(
            "Expected classification signature outputs to contain at least one of "
            f'"{CLASSIFY_OUTPUT_CLASSES}" or "{CLASSIFY_OUTPUT_SCORES}". '
            f"Signature was: {_debug_string(signature)}"
        )
    return signature.inputs[CLASSIFY_INPUTS].name, outputs


def classification_result(
    signature: meta_graph_pb2.SignatureDef,
    num_examples: int,
    output_names: list[str],
    outputs: list[np.ndarray],
) -> classification_pb2.ClassificationResult:
    """PostProcessClassificationResult(): check classes/scores and pair them per example."""
    if len(outputs) != len(output_names):
        raise InvalidArgument(f"Expected {len(output_names)} output tensor(s).  Got: {len(outputs)}")
    by_name = dict(zip(output_names, outputs, strict=True))
    classes = _output(signature, CLASSIFY_OUTPUT_CLASSES, by_name)
    scores = _output(signature, CLASSIFY_OUTPUT_SCORES, by_name)
    checks = ((classes, "classes", types_pb2.DT_STRING), (scores, "scores", types_pb2.DT_FLOAT))
    for tensor, kind, dtype in checks:
        if tensor is None:
            continue
        if tensor.ndim != 2:
            raise InvalidArgument(
                f"Expected Tensor shape: [batch_size num_classes] but got {shape_string(tensor.shape)}"
            )
        if data_type(tensor) != dtype:
            raise InvalidArgument(
                f"Expected {kind} Tensor of {types_pb2.DataType.Name(dtype)}. Got: {_data_type_name(tensor)}"
            )
        if tensor.shape[0] != num_examples:
            raise InvalidArgument(
                f"Expected {kind} output batch size of {num_examples}. Got: {tensor.shape[0]}"
            )
    if classes is not None and scores is not None and classes.shape[1] != scores.shape[1]:
        raise InvalidArgument(
            "Tensors class and score should match in dim_size(1). "
            f"Got {classes.shape[1]} vs. {scores.shape[1]}"
        )
    num_classes = (classes if classes is not None else scores).shape[1]  # type: ignore[union-attr]
    result = classification_pb2.ClassificationResult()
    for example in range(num_examples):
        classifications = result.classifications.add()
        for index in range(num_classes):
            entry = classifications.classes.add()
            if classes is not None:
                entry.label = _text(classes[example, index])
            if scores is not None:
                entry.score = float(scores[example, index])
    return result


async def run_classify(
    bundle: SavedModelBundle,
    signature_name: str,
    model_input: input_pb2.Input,
    check_method_name: bool = False,
    executor: Executor | None = None,
) -> classification_pb2.ClassificationResult:
    """RunClassify(): the signature's classes and scores for each example of `model_input`."""
    signature = classification_signature(bundle, signature_name, check_method_name)
    input_name, output_names = classification_tensor_names(signature, check_method_name)
    examples = serialized_examples(model_input)
    with metrics.runtime(bundle.model_name, "Classify"):
        outputs = await bundle.run([(input_name, examples)], output_names, executor)
    return classification_result(signature, len(examples), output_names, outputs)


# Regression ----------------------------------------------------------------------------


def regression_signature(
    bundle: SavedModelBundle, signature_name: str, check_method_name: bool
) -> meta_graph_pb2.SignatureDef:
    """GetRegressionSignatureDef(): the named (default: serving_default) signature, checked."""
    signature = _signature(bundle, signature_name)
    if check_method_name:
        _check_method_name(signature, REGRESS_METHOD, "regression")
    else:
        regression_tensor_names(signature)
    return signature


def regression_tensor_names(
    signature: meta_graph_pb2.SignatureDef, check_method_name: bool = False
) -> tuple[str, list[str]]:
    """PreProcessRegression(): the input tensor name and the one output tensor name."""
    if check_method_name:
        _check_method_name(signature, REGRESS_METHOD, "regression")
    if len(signature.inputs) != 1:
        raise InvalidArgument("Expected one input Tensor.")
    if len(signature.outputs) != 1:
        raise InvalidArgument("Expected one output Tensor.")
    if REGRESS_INPUTS not in signature.inputs:
        raise InvalidArgument(f"No regression inputs found in SignatureDef: {_debug_string(signature)}")
    if REGRESS_OUTPUTS not in signature.outputs:
        raise InvalidArgument(f"No regression outputs found in SignatureDef: {_debug_string(signature)}")
    return signature.inputs[REGRESS_INPUTS].name, [signature.outputs[REGRESS_OUTPUTS].name]


def regression_result(
    signature: meta_graph_pb2.SignatureDef,
    num_examples: int,
    output_names: list[str],
    outputs: list[np.ndarray],
) -> regression_pb2.RegressionResult:
    """PostProcessRegressionResult(): one float per example from a [N] or [N, 1] output."""
    if len(outputs) != len(output_names):
        raise InvalidArgument("Expected output_tensors and output_tensor_names to have the same size.")
    if REGRESS_OUTPUTS not in signature.outputs:
        raise FailedPrecondition(f"No regression outputs found in SignatureDef: {_debug_string(signature)}")
    output_name = signature.outputs[REGRESS_OUTPUTS].name
    by_name = dict(zip(output_names, outputs, strict=True))
    if output_name not in by_name:
        raise InvalidArgument(f"Could not find output tensor '{output_name}'")
    tensor = by_name[output_name]
    if not (tensor.ndim == 1 or (tensor.ndim == 2 and tensor.shape[1] == 1)):
        raise InvalidArgument(
            "Expected output Tensor shape to be either [batch_size] or [batch_size, 1] but got "
            f"{shape_string(tensor.shape)}"
        )
    if num_examples != tensor.shape[0]:
        raise InvalidArgument(
            f"Input batch size did not match output batch size: {num_examples} vs. {tensor.shape[0]}"
        )
    if data_type(tensor) != types_pb2.DT_FLOAT:
        raise InvalidArgument(f"Expected output Tensor of DT_FLOAT.  Got: {_data_type_name(tensor)}")
    if tensor.size != num_examples:
        raise InvalidArgument(f"Expected output batch size to be {num_examples}.  Got: {tensor.size}")
    result = regression_pb2.RegressionResult()
    for value in tensor.reshape(-1).tolist():
        result.regressions.add(value=value)
    return result


async def run_regress(
    bundle: SavedModelBundle,
    signature_name: str,
    model_input: input_pb2.Input,
    check_method_name: bool = False,
    executor: Executor | None = None,
) -> regression_pb2.RegressionResult:
    """RunRegress(): the signature's value for each example of `model_input`."""
    signature = regression_signature(bundle, signature_name, check_method_name)
    input_name, output_names = regression_tensor_names(signature, check_method_name)
    examples = serialized_examples(model_input)
    with metrics.runtime(bundle.model_name, "Regress"):
        outputs = await bundle.run([(input_name, examples)], output_names, executor)
    return regression_result(signature, len(examples), output_names, outputs)


# Helpers -------------------------------------------------------------------------------


def _data_type_name(array: np.ndarray) -> str:
    """DataType_Name(): DT_FLOAT, DT_STRING..."""
    return types_pb2.DataType.Name(data_type(array))


def _signature(bundle: SavedModelBundle, signature_name: str) -> meta_graph_pb2.SignatureDef:
    name = signature_name or DEFAULT_SIGNATURE
    signature = bundle.signature_defs.get(name)
    if signature is None:
        raise InvalidArgument(f"No signature was found with the name: {name}")
    return signature


def _check_method_name(signature: meta_graph_pb2.SignatureDef, method: str, kind: str) -> None:
    # --enable_signature_method_name_check
    if signature.method_name != method:
        raise InvalidArgument(
            f"Expected {kind} signature method_name to be {method}. Was: {signature.method_name}"
        )


def _output(
    signature: meta_graph_pb2.SignatureDef, alias: str, by_name: dict[str, np.ndarray]
) -> np.ndarray | None:
    """The fetched tensor the signature names `alias`, if it names one."""
    if alias not in signature.outputs:
        return None
    return by_name.get(signature.outputs[alias].name)


def _debug_string(message: object) -> str:
    """Message::DebugString(): the text format."""
    return text_format.MessageToString(message)  # type: ignore[arg-type]


def _text(value: object) -> str:
    # Labels are DT_STRING bytes; the proto field is a string, so invalid UTF-8 is replaced.
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
