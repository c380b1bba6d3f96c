"""The REST API's request bodies as JSON documents: parsing with rapidjson's rules and messages.

A body must be one JSON object (NaN/Infinity allowed, trailing bytes ignored), as
tensorflow_serving/util/json_tensor.cc's ParseJson; its values' helpers (base64 objects,
JSON type names, integer ranges) serve the predict and the classify/regress readers.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping

from serving.model_server.errors import InvalidArgument
from serving.model_server.rest.json_writer import debug_string

BASE64_KEY = "b64"
INT32 = (-(2**31), 2**31 - 1)
UINT32 = (0, 2**32 - 1)
INT64 = (-(2**63), 2**63 - 1)
UINT64 = (0, 2**64 - 1)

# rapidjson's GetParseError_En() wording for the errors Python's json module reports.
_PARSE_ERRORS = (
    ("Expecting property name enclosed in double quotes", "Missing a name for object member."),
    ("Expecting ':' delimiter", "Missing a colon after a name of object member."),
    ("Unterminated string", "Missing a closing quotation mark in string."),
    ("Invalid control character", "Invalid encoding in string."),
    ("Invalid \\uXXXX escape", "Incorrect hex digit after \\u escape in string."),
    ("Invalid \\escape", "Invalid escape character in string."),
    ("Expecting value", "Invalid value."),
)

class _NumberTooBig(ValueError):
    pass



def parse_request(body: bytes) -> dict[str, object]:
    """ParseJson(): the body as a JSON object (NaN/Infinity allowed, trailing bytes ignored)."""
    if not body:
        raise InvalidArgument("JSON Parse error: The document is empty")
    text = body.decode("utf-8", "surrogateescape").removeprefix("\ufeff")
    start = len(text) - len(text.lstrip(" \t\r\n"))
    try:
        if start == len(text):
            raise json.JSONDecodeError("The document is empty.", text, start)
        document, _ = _DECODER.raw_decode(text, start)
    except RecursionError:  # rapidjson parses iteratively; Python's parser has a depth limit
        raise InvalidArgument("JSON Parse error: The document is nested too deeply") from None
    except json.JSONDecodeError as error:
        offset = len(text[: error.pos].encode("utf-8", "surrogateescape"))
        raise InvalidArgument(f"JSON Parse error: {_parse_message(error)} at offset: {offset}") from None
    except _NumberTooBig as error:
        offset = len(text[: max(text.find(str(error)), 0)].encode("utf-8", "surrogateescape"))
        message = f"Number too big to be stored in double. at offset: {offset}"
        raise InvalidArgument(f"JSON Parse error: {message}") from None
    if not isinstance(document, dict):
        raise InvalidArgument(f"JSON Value: {debug_string(document)} Is not object")
    return document


def signature_name(document: Mapping[str, object]) -> str:
    """FillSignature(): the optional `signature_name`, which must be a string."""
    value = document.get("signature_name", "")
    if not isinstance(value, str):
        raise InvalidArgument(
            f"JSON Value: {debug_string(document)} not formatted correctly. "
            "'signature_name' key must be a string value."
        )
    return value


def _parse_int(text: str) -> int | float:
    # rapidjson keeps integers that fit 64 bits; bigger ones become doubles.
    if len(text) <= 20:
        value = int(text)
        if INT64[0] <= value <= UINT64[1]:
            return value
    return _parse_float(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise _NumberTooBig(text)
    return value


_DECODER = json.JSONDecoder(parse_int=_parse_int, parse_float=_parse_float)


def _parse_message(error: json.JSONDecodeError) -> str:
    if error.msg == "The document is empty.":
        return error.msg
    if error.msg.startswith("Expecting ',' delimiter"):
        if _innermost_container(error.doc, error.pos) == "[":
            return "Missing a comma or ']' after an array element."
        return "Missing a comma or '}' after an object member."
    for python_message, rapidjson_message in _PARSE_ERRORS:
        if error.msg.startswith(python_message):
            return rapidjson_message
    return error.msg


_TOKENS = re.compile(r'"(?:[^"\\]|\\.)*"?|[\[\]{}]')


def _innermost_container(text: str, position: int) -> str:
    """'[' or '{': the bracket still open at `position` (strings skipped)."""
    stack: list[str] = []
    for match in _TOKENS.finditer(text, 0, position):
        token = match.group()
        if token in "[{":
            stack.append(token)
        elif token in "]}" and stack:
            stack.pop()
    return stack[-1] if stack else "{"


def is_base64_object(value: object) -> bool:
    """IsValBase64Object(): exactly one key, "b64", holding a string."""
    return isinstance(value, dict) and len(value) == 1 and isinstance(value.get(BASE64_KEY), str)


def is_element_object(value: object) -> bool:
    return isinstance(value, dict) and not is_base64_object(value)


def decode_base64_object(value: dict[str, object]) -> bytes:
    if not is_base64_object(value):
        raise InvalidArgument(f"JSON Value: {debug_string(value)} not formatted correctly for base64 data")
    text = str(value[BASE64_KEY])
    # absl::Base64Unescape: standard alphabet, padding optional.
    if len(text) % 4 == 1:
        raise InvalidArgument("Unable to base64 decode")
    try:
        return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise InvalidArgument("Unable to base64 decode") from None


def is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def is_integer_in(value: object, bounds: tuple[int, int]) -> bool:
    # rapidjson's IsInt()/IsInt64()/IsUint()...: an integer literal within the type's range.
    return isinstance(value, int) and not isinstance(value, bool) and bounds[0] <= value <= bounds[1]


def json_type(value: object) -> str:
    """JsonTypeString()."""
    if value is None:
        return "Null"
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, dict):
        return "Object"
    if isinstance(value, list):
        return "Array"
    if isinstance(value, str):
        return "String"
    return "Number"


def to_bytes(text: str) -> bytes:
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate from a \\uD8xx escape
        return text.encode("utf-8", "surrogatepass")
