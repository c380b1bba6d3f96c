"""The gateway's errors: one small hierarchy, one table from HTTP statuses to codes, one from gRPC codes.

Every error answers JSON `{"error": "<for a person>", "code": "<stable machine code>"}`.
"""

from __future__ import annotations

import grpc


class GatewayError(Exception):
    """Base class: `status` is the HTTP status, `code` the stable machine-readable code."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidImageError(GatewayError):
    status, code = 400, "invalid_image"


class InvalidRequestError(GatewayError):
    status, code = 400, "invalid_request"


class ExplanationUnavailableError(GatewayError):
    """explain=true for a model version exported without an explanation signature."""

    status, code = 400, "explanation_unavailable"


class UnauthorizedError(GatewayError):
    status, code = 401, "unauthorized"


class ModelNotFoundError(GatewayError):
    status, code = 404, "model_not_found"


class PayloadTooLargeError(GatewayError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaTypeError(GatewayError):
    status, code = 415, "unsupported_media_type"


class ModelServerUnavailableError(GatewayError):
    status, code = 503, "model_server_unavailable"


class ModelMisconfiguredError(GatewayError):
    """The model serves, but its exported assets (preprocessing.json) do not say how to feed it."""

    status, code = 503, "model_misconfigured"


class DeadlineExceededError(GatewayError):
    status, code = 504, "deadline_exceeded"


# What a model server's gRPC status means for the HTTP caller.
_ERROR_BY_GRPC_CODE: dict[grpc.StatusCode, type[GatewayError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.NOT_FOUND: ModelNotFoundError,
    grpc.StatusCode.FAILED_PRECONDITION: InvalidRequestError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidRequestError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ModelServerUnavailableError,
    grpc.StatusCode.UNAVAILABLE: ModelServerUnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.CANCELLED: ModelServerUnavailableError,
}


def from_grpc_error(error: grpc.RpcError) -> GatewayError:
    """Translate a failed model-server call; unexpected codes become 503, never a 500."""
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    details = (error.details() if hasattr(error, "details") else None) or str(code)
    error_class = _ERROR_BY_GRPC_CODE.get(code, ModelServerUnavailableError)
    if error_class is ModelServerUnavailableError and code not in _ERROR_BY_GRPC_CODE:
        return ModelServerUnavailableError(f"model server error ({code.name}): {details}",
                                           code="model_server_error")
    if error_class is ModelServerUnavailableError:
        return ModelServerUnavailableError(f"model server unavailable: {details}")
    if error_class is DeadlineExceededError:
        return DeadlineExceededError(f"model server did not answer in time: {details}")
    return error_class(details)


# The code of an HTTP error that is not a GatewayError (Werkzeug's, or gunicorn's own answers).
CODE_BY_HTTP_STATUS: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    413: "payload_too_large",
    414: "uri_too_long",
    415: "unsupported_media_type",
    417: "expectation_failed",
    431: "request_header_fields_too_large",
    500: "internal_error",
    501: "not_implemented",
}
