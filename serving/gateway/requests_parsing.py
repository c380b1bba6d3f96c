"""Pull images and query options out of an HTTP request; every bad input becomes a GatewayError."""

from __future__ import annotations

import base64
import binascii
import io
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import IO, Any

from flask import Request
from werkzeug.formparser import FormDataParser

from serving.gateway.config import parse_boolean
from serving.gateway.errors import InvalidRequestError, PayloadTooLargeError, UnsupportedMediaTypeError

SUPPORTED_TYPES = (
    'multipart/form-data (field \'image\'), image/*, or application/json {"instances": [{"b64": ...}]}'
)
# Raw bodies: any image/* type, and the generic binary type many HTTP clients send for files.
RAW_BINARY_TYPES = ("application/octet-stream",)
_DIGITS = re.compile(r"[0-9]{1,18}")  # ASCII only: str.isdigit() accepts '²', which int() refuses
_LABEL = re.compile(r"[A-Za-z0-9_-]{1,64}")
_WHITESPACE = re.compile(rb"\s+")
_DATA_URL = re.compile(r"data:[\w.+/-]*;base64,", re.ASCII)


class GatewayRequest(Request):
    """Flask's request, with uploaded files kept in memory (the app's `request_class`).

    Werkzeug spools every file part to a SpooledTemporaryFile, a costly object for a
    few-kilobyte image; the body is bounded by MAX_CONTENT_LENGTH and the images are read
    into memory anyway, so a plain buffer holds each part.
    """

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        return io.BytesIO()

    def make_form_data_parser(self) -> FormDataParser:
        # Werkzeug's parser drops a body it cannot parse (no boundary, a part cut short) without a
        # word, and the request would be answered "no field 'image'"; here the error is kept.
        parser = super().make_form_data_parser()
        parser.silent = False
        return parser


@dataclass(frozen=True)
class PredictOptions:
    top_k: int
    version: int | None
    label: str | None
    debug: bool = False  # answer what the model saw, per image
    explain: bool = False  # answer a saliency map and its heatmap, per image


def parse_options(request: Request, default_top_k: int, max_top_k: int) -> PredictOptions:
    args = request.args
    top_k = _positive_int(args.get("top_k"), "top_k", default_top_k)
    if not 1 <= top_k <= max_top_k:
        raise InvalidRequestError(
            f"top_k must be between 1 and {max_top_k}, got {top_k}", code="invalid_top_k"
        )
    version = _positive_int(args.get("version"), "version", None)
    label = args.get("label") or None
    if version is not None and label is not None:
        raise InvalidRequestError("give either 'version' or 'label', not both", code="invalid_version")
    if label is not None and not _LABEL.fullmatch(label):
        raise InvalidRequestError(
            "'label' must be 1 to 64 letters, digits, '-' or '_'", code="invalid_version"
        )
    return PredictOptions(top_k=top_k, version=version, label=label, debug=_flag(args.get("debug"), "debug"),
                          explain=_flag(args.get("explain"), "explain"))


def _flag(value: str | None, name: str) -> bool:
    try:
        return parse_boolean(value or "")
    except ValueError:
        raise InvalidRequestError(f"'{name}' must be true or false, got {(value or '')[:32]!r}",
                                  code=f"invalid_{name}") from None


def _positive_int(value: str | None, name: str, default: int | None) -> Any:
    if value is None or value == "":
        return default
    if not _DIGITS.fullmatch(value) or int(value) < 1:
        raise InvalidRequestError(
            f"'{name}' must be a positive integer, got {value[:32]!r}", code=f"invalid_{name}"
        )
    return int(value)


def has_chunked_body(environ: Mapping[str, Any]) -> bool:
    """A body sent in chunks, without Content-Length (gunicorn sets `wsgi.input_terminated` always)."""
    return "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()


def extract_images(request: Request, max_images: int) -> list[bytes]:
    """The encoded images of a predict request, whichever of the three forms it uses."""
    mimetype = request.mimetype or ""
    if mimetype == "multipart/form-data":
        images = _images_from_multipart(request, max_images)
    elif mimetype.startswith("image/") or mimetype in RAW_BINARY_TYPES:
        images = [_read_body(request)]
    elif mimetype == "application/json":
        images = _images_from_json(request, max_images)
    elif not mimetype and not request.content_length and not has_chunked_body(request.environ):
        raise InvalidRequestError(
            f"the request has no body; send an image as {SUPPORTED_TYPES}", code="missing_image"
        )
    else:
        shown = mimetype[:64] if mimetype.isprintable() else repr(mimetype[:64])
        raise UnsupportedMediaTypeError(
            f"content type '{shown or 'none'}' is not supported; send {SUPPORTED_TYPES}"
        )
    return images


def _read_body(request: Request) -> bytes:
    data = request.get_data(cache=False)
    limit = request.max_content_length
    # Werkzeug stops a body without Content-Length (chunked) at the limit without saying so:
    # one more byte on the wire means the body was larger, not that the image is truncated.
    over_limit = limit is not None and request.content_length is None and len(data) >= limit
    if over_limit and request.environ["wsgi.input"].read(1):
        raise PayloadTooLargeError(f"the request body is larger than {limit} bytes")
    return data


def _too_many(count: int, max_images: int) -> PayloadTooLargeError:
    return PayloadTooLargeError(
        f"{count} images in one request; at most {max_images} are accepted", code="too_many_images"
    )


def _images_from_multipart(request: Request, max_images: int) -> list[bytes]:
    try:
        files = request.files.getlist("image")
    except ValueError as error:  # the body is not multipart/form-data as its Content-Type says
        problem = _multipart_problem(error)
        raise InvalidRequestError(f"the multipart body cannot be parsed: {problem}") from None
    if not files:
        if request.form.getlist("image"):
            raise InvalidRequestError(
                "field 'image' was sent as text; send it as a file (curl -F image=@picture.png)",
                code="missing_image",
            )
        fields = sorted(set(request.files) | set(request.form))[:20]
        shown = [field[:64] for field in fields]
        raise InvalidRequestError(
            f"multipart request has no field 'image' (fields sent: {shown or 'none'})", code="missing_image"
        )
    if len(files) > max_images:
        raise _too_many(len(files), max_images)
    return [file.read() for file in files]


def _multipart_problem(error: ValueError) -> str:
    """Werkzeug's parsing error, in the words of someone who built the request."""
    message = str(error)
    if isinstance(error, UnicodeDecodeError):
        return "a part's headers (its field or file name) are not UTF-8"
    if message == "Missing boundary":
        return "the Content-Type has no usable boundary parameter (multipart/form-data; boundary=...)"
    if message.endswith("State.PREAMBLE"):
        return "no part starts with the boundary the Content-Type gives"
    if "cannot parse beyond" in message:
        return "the body ends before the closing boundary (--boundary--)"
    return message[:200]


def _images_from_json(request: Request, max_images: int) -> list[bytes]:
    try:
        # Parsed here rather than with get_json(): a deeply nested body raises RecursionError,
        # which Flask does not treat as a JSON error.
        body = json.loads(_read_body(request))
    except (ValueError, RecursionError):
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("instances"), list) or not body["instances"]:
        raise InvalidRequestError(
            'JSON body must be {"instances": [{"b64": "<base64 image>"}, ...]}', code="invalid_json"
        )
    instances = body["instances"]
    if len(instances) > max_images:
        raise _too_many(len(instances), max_images)
    images = []
    for index, instance in enumerate(instances):
        encoded = instance.get("b64") if isinstance(instance, dict) else None
        if not isinstance(encoded, str):
            raise InvalidRequestError(
                f'instance {index} must be an object {{"b64": "<base64 image>"}}', code="invalid_json"
            )
        images.append(_decode_base64(encoded, index))
    return images


def _decode_base64(encoded: str, index: int) -> bytes:
    """Standard base64; line breaks (as `base64` wraps) and a data: URL prefix are accepted."""
    prefix = _DATA_URL.match(encoded)
    if prefix:
        encoded = encoded[prefix.end() :]
    try:
        return base64.b64decode(_WHITESPACE.sub(b"", encoded.encode("ascii")), validate=True)
    except (binascii.Error, ValueError):  # UnicodeEncodeError is a ValueError
        raise InvalidRequestError(
            f"instance {index}: 'b64' is not valid base64", code="invalid_base64"
        ) from None
