"""TF Serving's REST API over the core: `/v1/models/...` paths in, JSON answers out, no sockets.

HttpRestApiHandler's routing, order of checks and answers (model_servers/
http_rest_api_handler.cc, http_rest_api_util.cc): status and metadata as protobuf JSON,
`:predict` / `:classify` / `:regress` through the JSON modules beside this one, errors as `{"error": ...}`
with http_server.cc's status for the code. http_server.py puts it on a port; its threads
parse and write JSON, and hand each model run to the server's event loop.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import re
from collections.abc import Coroutine
from typing import Any, TypeVar
from urllib.parse import unquote_to_bytes

from google.protobuf import json_format

from serving.model_server.core import ModelServerCore, model_status_response
from serving.model_server.errors import InvalidArgument, ModelServerError, http_status
from serving.model_server.rest import examples_request, json_answers, json_document, predict_request
from serving.model_server.run_options import run_timeout
from serving.protos.tensorflow_serving.apis import model_pb2

logger = logging.getLogger(__name__)

# kHTTPRestApiHandlerPathRegex, kPredictionApiGegex and kModelStatusApiRegex, (?i) included.
API_PATH = re.compile(r"/v1/.*", re.IGNORECASE)
PREDICTION_PATH = re.compile(
    r"/v1/models/([^/:]+)(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?:(classify|regress|predict)",
    re.IGNORECASE,
)
STATUS_PATH = re.compile(
    r"/v1/models(?:/([^/:]+))?(?:(?:/versions/(\d+))|(?:/labels/([^/:]+)))?(?:/(metadata))?",
    re.IGNORECASE,
)
_INT64_MAX = 2**63 - 1
Result = TypeVar("Result")


@dataclasses.dataclass(frozen=True)
class RestAnswer:
    """What the HTTP edge sends back, and what a request log or metric needs to know."""

    status: int
    body: str | bytes  # text is sent as UTF-8
    model_name: str = ""
    method: str = ""  # classify, regress or predict (as written in the path); "" otherwise
    error: ModelServerError | None = None
    content_type: str = "application/json"
    headers: tuple[tuple[str, str], ...] = ()  # more, e.g. the v2 binary extension's header length


@dataclasses.dataclass(frozen=True)
class _Target:
    model_name: str
    version: int | None
    version_label: str | None
    method: str  # POST: classify, regress or predict
    subresource: str | None  # GET: "metadata", "" for status; None when not a GET path


class RestApiHandler:
    """HttpRestApiHandler: one per server, safe to call from many threads at once, but not the loop's."""

    def __init__(
        self, core: ModelServerCore, loop: asyncio.AbstractEventLoop, timeout_in_ms: int = 0
    ) -> None:
        self.core = core
        self.loop = loop  # where the core's coroutines run
        # RunOptions.timeout_in_ms of every session run a request makes; <= 0: none.
        self.timeout_seconds = timeout_in_ms / 1000 if timeout_in_ms > 0 else None

    def handle(self, http_method: str, path: str, body: bytes) -> RestAnswer:
        """ProcessRequest(): answer one request; `path` is the URI path as sent (not unquoted)."""
        target: _Target | None = None
        try:
            target = _parse_path(http_method, path)
            body_text = self._dispatch(http_method, path, target, body)
            return RestAnswer(200, body_text, target.model_name, target.method)
        except ModelServerError as error:
            name, method = (target.model_name, target.method) if target else ("", "")
            answer = json_answers.error_response(error.message)
            return RestAnswer(http_status(error.code), answer, name, method, error)

    def _dispatch(self, http_method: str, path: str, target: _Target, body: bytes) -> str:
        if http_method == "POST" and target.method == "predict":
            return self._predict(target, body)
        if http_method == "POST" and target.method == "classify":
            return self._classify_or_regress(target, body, classify=True)
        if http_method == "POST" and target.method == "regress":
            return self._classify_or_regress(target, body, classify=False)
        if http_method == "GET" and target.subresource == "metadata":
            return self._metadata(target)
        if http_method == "GET" and target.subresource is not None:
            return self._status(target)
        raise InvalidArgument(f"Malformed request: {http_method} {path}")

    def _predict(self, target: _Target, body: bytes) -> str:
        document = json_document.parse_request(body)
        signature = json_document.signature_name(document)
        tensor_infos = self.core.signature_inputs(target.model_name, signature, **_version(target))
        request_format, inputs = predict_request.predict_inputs(document, tensor_infos, signature)
        result = self.run(
            self.core.predict(
                target.model_name, inputs, signature_name=signature, decode=_identity, **_version(target)
            )
        )
        return json_answers.predict_response(result.outputs, request_format)

    def _classify_or_regress(self, target: _Target, body: bytes, classify: bool) -> str:
        document = json_document.parse_request(body)
        signature = json_document.signature_name(document)
        model_input = examples_request.examples_input(document)
        if classify:
            classified = self.run(
                self.core.classify(
                    target.model_name, model_input, signature_name=signature, **_version(target)
                )
            )
            return json_answers.classification_response(classified.result)
        regressed = self.run(
            self.core.regress(target.model_name, model_input, signature_name=signature, **_version(target))
        )
        return json_answers.regression_response(regressed.result)

    def run(self, coroutine: Coroutine[Any, Any, Result]) -> Result:
        """Run a core coroutine on the server's loop, bounded by --rest_api_timeout_in_ms; wait for it."""
        if _running_loop() is self.loop:  # waiting here would stop the loop that must answer
            coroutine.close()
            raise RuntimeError("RestApiHandler called from its own event loop's thread")

        async def with_timeout() -> Result:
            with run_timeout(self.timeout_seconds):
                return await coroutine

        return asyncio.run_coroutine_threadsafe(with_timeout(), self.loop).result()

    def _status(self, target: _Target) -> str:
        # ProcessModelStatusRequest(); a label picks no version here, as in TF Serving.
        if not target.model_name:
            raise InvalidArgument("Missing model name in request.")
        response = model_status_response(self.core.get_model_status(target.model_name, target.version))
        return _to_json(response, preserving_proto_field_name=False)

    def _metadata(self, target: _Target) -> str:
        # ProcessModelMetadataRequest() and ToJsonString(GetModelMetadataResponse): the Any is
        # unpacked and the pieces concatenated, so `signature_def` nests twice.
        if not target.model_name:
            raise InvalidArgument("Missing model name in request.")
        metadata = self.core.get_model_metadata(target.model_name, ["signature_def"], **_version(target))
        spec = model_pb2.ModelSpec(name=metadata.model_name)
        spec.version.value = metadata.version
        signature_map = metadata.signature_def_map()
        return (
            "{\n"
            f'"model_spec":{_to_json(spec)},\n'
            f'"metadata": {{"signature_def": {_to_json(signature_map)}}}\n'
            "}\n"
        )


def _parse_path(http_method: str, path: str) -> _Target:
    """ParseModelInfo(): model name (unquoted), version or label, method or subresource."""
    if http_method == "POST":
        match = PREDICTION_PATH.fullmatch(path)
    elif http_method == "GET":
        match = STATUS_PATH.fullmatch(path)
    else:
        match = None
    if match is None:  # the caller answers "Malformed request"
        return _Target("", None, None, "", None)
    name, version_text, label, last = match.groups()
    model_name = _unquote(name) if name else ""
    version = None
    if version_text:
        version = int(version_text)
        if version > _INT64_MAX:
            raise InvalidArgument(f"Failed to convert version: {version_text} to numeric.")
    version_label = _unquote(label) if label else None
    if http_method == "POST":
        return _Target(model_name, version, version_label, last, None)
    return _Target(model_name, version, version_label, "", last or "")


def _version(target: _Target) -> dict[str, Any]:
    if target.version is not None:
        return {"version": target.version}
    if target.version_label is not None:
        return {"version_label": target.version_label}
    return {}


def _unquote(text: str) -> str:
    # curl_easy_unescape(): %XX only ('+' stays), bytes kept even if not UTF-8.
    return unquote_to_bytes(text).decode("utf-8", "surrogateescape")


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _identity(value: object) -> object:
    return value


def _to_json(message: object, preserving_proto_field_name: bool = True) -> str:
    """MessageToJsonString() with add_whitespace and always_print_fields_with_no_presence."""
    return (
        json_format.MessageToJson(
            message,  # type: ignore[arg-type]
            preserving_proto_field_name=preserving_proto_field_name,
            indent=1,
            always_print_fields_with_no_presence=True,
            ensure_ascii=False,
        )
        + "\n"
    )
