"""The Open Inference Protocol's REST API: `/v2/...` paths in, JSON (and binary) answers out.

Routes of the protocol's HTTP/REST spec, with Triton's binary tensor data extension: a body
whose first `Inference-Header-Content-Length` bytes are the JSON request and the rest the
inputs' bytes in order (`parameters.binary_data_size` each); outputs asked for with
`binary_data` (or `binary_data_output` for all) come back the same way. Errors are
`{"error": message}` with the status the core's code maps to (400, 404, 503...).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

import numpy as np

from serving.model_server.errors import InvalidArgument, ModelServerError, http_status
from serving.model_server.oip import tensors
from serving.model_server.oip.service import InferResult, OipService, RequestedOutput
from serving.model_server.rest.api import RestAnswer, RestApiHandler

HEADER_LENGTH = "Inference-Header-Content-Length"
MODEL_PATH = re.compile(r"/v2/models/([^/]+)(?:/versions/([^/]+))?(?:/(ready|infer))?")
NOT_READY = 400  # the protocol: 200 means ready, any 4xx not


class OipRestHandler:
    """Answers `/v2` requests; runs inference on the server's loop through the v1 handler's `run`."""

    def __init__(self, service: OipService, rest_handler: RestApiHandler) -> None:
        self.service = service
        self.rest_handler = rest_handler  # owns the loop and --rest_api_timeout_in_ms

    def handle(self, method: str, path: str, body: bytes, headers: Mapping[str, str]) -> RestAnswer:
        model_name = ""
        try:
            match = MODEL_PATH.fullmatch(path)
            if match is None:
                return self._server_route(method, path)
            name, version, action = match.groups()
            model_name, version = unquote(name), unquote(version or "")
            if method == "POST" and action == "infer":
                return self._infer(model_name, version, body, headers)
            if method == "GET" and action == "ready":
                ready = self.service.model_ready(model_name, version)
                return _json(200 if ready else NOT_READY, {"name": model_name, "ready": ready})
            if method == "GET" and action is None:
                return _json(200, self.service.model_metadata(model_name, version))
            raise InvalidArgument(f"Malformed request: {method} {path}")
        except ModelServerError as error:
            # Counted as the core counts a failed predict only when it was an infer request.
            counted = model_name if path.endswith("/infer") else ""
            answer = _json(http_status(error.code), {"error": error.message})
            return RestAnswer(answer.status, answer.body, counted, "predict" if counted else "", error)

    def _server_route(self, method: str, path: str) -> RestAnswer:
        if method == "GET" and path in ("/v2", "/v2/"):
            return _json(200, self.service.server_metadata())
        if method == "GET" and path == "/v2/health/live":
            return _json(200, {"live": True})
        if method == "GET" and path == "/v2/health/ready":
            ready = self.service.server_ready()
            return _json(200 if ready else NOT_READY, {"ready": ready})
        raise InvalidArgument(f"Malformed request: {method} {path}")

    def _infer(self, model_name: str, version: str, body: bytes, headers: Mapping[str, str]) -> RestAnswer:
        document, binary = _split_body(body, headers.get(HEADER_LENGTH.lower()))
        inputs = _read_inputs(document.get("inputs"), binary)
        binary_default = _parameters(document, "request").get("binary_data_output") is True
        requested = _requested_outputs(document.get("outputs", []), binary_default)
        binary_outputs = {output.name for output, binary in requested if binary}
        result = self.rest_handler.run(
            self.service.infer(model_name, version, inputs, [output for output, _ in requested])
        )
        if not requested and binary_default:
            binary_outputs = {name for name, _ in result.outputs}
        answer = _infer_answer(result, document.get("id"), binary_outputs)
        return RestAnswer(
            answer.status, answer.body, model_name, "predict", None, answer.content_type, answer.headers
        )


def _split_body(body: bytes, header_length: str | None) -> tuple[dict[str, Any], memoryview]:
    """The JSON request and the binary data after it."""
    if header_length is None:
        json_part, binary = body, memoryview(b"")
    else:
        if not header_length.strip().isdigit():
            raise InvalidArgument(f"{HEADER_LENGTH} must be a non-negative integer, got {header_length!r}")
        length = int(header_length)
        if length > len(body):
            raise InvalidArgument(f"{HEADER_LENGTH} is {length} but the body has only {len(body)} bytes")
        json_part, binary = body[:length], memoryview(body)[length:]
    try:
        document = json.loads(json_part)
    except (ValueError, RecursionError) as error:
        raise InvalidArgument(f"the inference request is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise InvalidArgument("the inference request must be a JSON object")
    return document, binary


def _parameters(item: dict[str, Any], what: str) -> dict[str, Any]:
    parameters = item.get("parameters", {})
    if not isinstance(parameters, dict):
        raise InvalidArgument(f"{what} parameters must be a JSON object")
    return parameters


def _read_inputs(items: object, binary: memoryview) -> dict[str, np.ndarray]:
    if not isinstance(items, list) or not items:
        raise InvalidArgument("the inference request must have a non-empty list of inputs")
    inputs: dict[str, np.ndarray] = {}
    offset = 0
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidArgument("each input must be an object with a name, datatype, shape and data")
        name, datatype = item["name"], item.get("datatype")
        if name in inputs:
            raise InvalidArgument(f"input '{name}' appears twice")
        if not isinstance(datatype, str):
            raise InvalidArgument(f"input '{name}': datatype must be a string")
        shape = tensors.check_shape(name, item.get("shape"))
        size = _parameters(item, f"input '{name}'").get("binary_data_size")
        if size is None:
            if "data" not in item:
                raise InvalidArgument(f"input '{name}' has neither data nor binary_data_size")
            inputs[name] = tensors.from_json(name, datatype, shape, item["data"])
            continue
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise InvalidArgument(f"input '{name}': binary_data_size must be a non-negative integer")
        if offset + size > len(binary):
            raise InvalidArgument(
                f"input '{name}': binary data is truncated: {size} bytes expected at offset {offset}, "
                f"{max(len(binary) - offset, 0)} there"
            )
        inputs[name] = tensors.from_raw(name, datatype, shape, binary[offset : offset + size])
        offset += size
    if offset != len(binary):
        raise InvalidArgument(
            f"{len(binary) - offset} bytes of binary data after the inputs' binary_data_size"
        )
    return inputs


def _requested_outputs(items: object, binary_default: bool) -> list[tuple[RequestedOutput, bool]]:
    """Each output asked for, and whether it is to come back as binary data."""
    if not isinstance(items, list):
        raise InvalidArgument("outputs must be a list")
    requested = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise InvalidArgument("each requested output must be an object with a name")
        parameters = _parameters(item, f"output '{item['name']}'")
        classification = parameters.get("classification", 0)
        binary = parameters.get("binary_data", binary_default) is True
        requested.append((RequestedOutput(item["name"], classification), binary))
    return requested


def _infer_answer(result: InferResult, request_id: object, binary_outputs: set[str]) -> RestAnswer:
    outputs, chunks = [], []
    for name, value in result.outputs:
        output: dict[str, Any] = {
            "name": name,
            "datatype": tensors.datatype_of(value),
            "shape": list(value.shape),
        }
        if name in binary_outputs:
            chunks.append(tensors.to_raw(value))
            output["parameters"] = {"binary_data_size": len(chunks[-1])}
        else:
            output["data"] = tensors.to_values(value)
        outputs.append(output)
    document: dict[str, Any] = {"model_name": result.model_name, "model_version": str(result.version)}
    if isinstance(request_id, str) and request_id:
        document["id"] = request_id
    document["outputs"] = outputs
    header = json.dumps(document, separators=(",", ":")).encode()
    if not chunks:
        return RestAnswer(200, header)
    return RestAnswer(
        200,
        b"".join([header, *chunks]),
        content_type="application/octet-stream",
        headers=((HEADER_LENGTH, str(len(header))),),
    )


def _json(status: int, document: dict[str, Any]) -> RestAnswer:
    return RestAnswer(status, json.dumps(document, separators=(",", ":")))
