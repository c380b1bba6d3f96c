"""Thin gRPC servicer for the Open Inference Protocol's `inference.GRPCInferenceService`.

Beside TF Serving's services on the same port: each method unpacks the request, calls
OipService, packs the answer; errors, metrics (ModelInfer counts as a Predict) and the
request log line are grpc_service.py's `handle_errors`. Outputs travel as
`raw_output_contents`, as Triton answers; inputs come either way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import grpc
import numpy as np

from serving.model_server.errors import InvalidArgument
from serving.model_server.grpc_service import handle_errors
from serving.model_server.oip import tensors
from serving.model_server.oip.service import OipService, RequestedOutput
from serving.protos.inference import grpc_predict_v2_pb2 as pb
from serving.protos.inference import grpc_predict_v2_pb2_grpc

# InferTensorContents' field for each datatype (FP16 and BF16 travel only raw).
CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    tensors.BYTES: "bytes_contents",
}


class InferenceServicer(grpc_predict_v2_pb2_grpc.GRPCInferenceServiceServicer):
    """inference.GRPCInferenceService: live, ready, metadata and ModelInfer over OipService.

    ModelInfer takes one of `run_slots()`, the semaphore TF Serving's Predict takes too, so
    both APIs together run no more models at once than --grpc_max_threads allows.
    """

    def __init__(self, service: OipService, run_slots: Callable[[], asyncio.Semaphore]) -> None:
        self._service = service
        self._run_slots = run_slots

    @handle_errors
    async def ServerLive(
        self, request: pb.ServerLiveRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    @handle_errors
    async def ServerReady(
        self, request: pb.ServerReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self._service.server_ready())

    @handle_errors
    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=self._service.model_ready(request.name, request.version))

    @handle_errors
    async def ServerMetadata(
        self, request: pb.ServerMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(**self._service.server_metadata())

    @handle_errors
    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        metadata = self._service.model_metadata(request.name, request.version)
        return pb.ModelMetadataResponse(
            name=metadata["name"],
            versions=metadata["versions"],
            platform=metadata["platform"],
            inputs=[pb.ModelMetadataResponse.TensorMetadata(**tensor) for tensor in metadata["inputs"]],
            outputs=[pb.ModelMetadataResponse.TensorMetadata(**tensor) for tensor in metadata["outputs"]],
        )

    @handle_errors
    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        inputs = _read_inputs(request)
        outputs = [RequestedOutput(output.name, _classification(output)) for output in request.outputs]
        async with self._run_slots():
            result = await self._service.infer(request.model_name, request.model_version, inputs, outputs)
        response = pb.ModelInferResponse(
            model_name=result.model_name, model_version=str(result.version), id=request.id
        )
        for name, value in result.outputs:
            response.outputs.add(name=name, datatype=tensors.datatype_of(value), shape=value.shape)
            response.raw_output_contents.append(tensors.to_raw(value))
        return response


def _read_inputs(request: pb.ModelInferRequest) -> dict[str, np.ndarray]:
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidArgument(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs: one each expected"
        )
    inputs: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        if tensor.name in inputs:
            raise InvalidArgument(f"input '{tensor.name}' appears twice")
        shape = tensors.check_shape(tensor.name, list(tensor.shape))
        if raw:
            if tensor.HasField("contents"):
                raise InvalidArgument(f"input '{tensor.name}': contents and raw_input_contents are exclusive")
            inputs[tensor.name] = tensors.from_raw(tensor.name, tensor.datatype, shape, raw[index])
            continue
        field = CONTENTS_FIELD.get(tensor.datatype)
        if field is None:
            raise InvalidArgument(
                f"input '{tensor.name}': datatype {tensor.datatype!r} must be sent in raw_input_contents"
            )
        values = getattr(tensor.contents, field)
        inputs[tensor.name] = tensors.from_values(tensor.name, tensor.datatype, shape, list(values))
    return inputs


def _classification(output: pb.ModelInferRequest.InferRequestedOutputTensor) -> int:
    # tritonclient sends class_count as int64_param; accept the other integer kind too.
    if "classification" not in output.parameters:
        return 0
    parameter = output.parameters["classification"]
    choice = parameter.WhichOneof("parameter_choice")
    if choice not in ("int64_param", "uint64_param"):
        raise InvalidArgument(f"output '{output.name}': classification must be an integer parameter")
    return int(getattr(parameter, choice))
