"""JSON text laid out exactly as TF Serving's REST API writes it (rapidjson's PrettyWriter).

TF Serving's answers have a recognisable shape (`"predictions": [2.5, 3.0, 4.5\\n    ]`)
because json_tensor.cc switches PrettyWriter's single-line-array option on and off
mid-document, and floats go through its WriteDecimal (shortest of %g and %.9g/%.17g,
".0" on whole numbers, NaN/Infinity tokens). `PrettyWriter` reproduces both, and
`debug_string` the 256-byte JSON snippets its error messages quote.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
from decimal import Decimal

import numpy as np

INDENT = "    "  # PrettyWriter's default: 4 spaces
MAX_DEBUG_STRING_BYTES = 256  # json_tensor.cc kMaxJsonDebugStringBytes
_SHORT_ESCAPES = {"\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r", '"': '\\"', "\\": "\\\\"}


class _LimitReached(Exception):
    """The bounded writer is full; rapidjson's Accept() stops at this token."""


@dataclasses.dataclass
class _Level:
    in_array: bool
    value_count: int = 0


class PrettyWriter:
    """rapidjson::PrettyWriter<StringBuffer>: call the handler methods, read `text()`."""

    def __init__(self, limit: int | None = None) -> None:
        self.single_line_arrays = False  # rapidjson::kFormatSingleLineArray
        self._parts: list[str] = []
        self._size = 0
        self._levels: list[_Level] = []
        self._limit = limit

    def text(self) -> str:
        return "".join(self._parts)

    def start_object(self) -> None:
        self._prefix()
        self._write("{")
        self._levels.append(_Level(in_array=False))

    def end_object(self) -> None:
        self._check_limit()
        level = self._levels.pop()
        if level.value_count:
            self._write("\n" + INDENT * len(self._levels))
        self._write("}")

    def start_array(self) -> None:
        self._prefix()
        self._write("[")
        self._levels.append(_Level(in_array=True))

    def end_array(self) -> None:
        self._check_limit()
        level = self._levels.pop()
        if level.value_count and not self.single_line_arrays:
            self._write("\n" + INDENT * len(self._levels))
        self._write("]")

    def key(self, name: str) -> None:
        self.string(name)

    def string(self, value: str) -> None:
        self._prefix()
        self._write(quote(value))

    def raw_number(self, text: str) -> None:
        self._prefix()
        self._write(text)

    def boolean(self, value: bool) -> None:
        self.raw_number("true" if value else "false")

    def null(self) -> None:
        self.raw_number("null")

    def _prefix(self) -> None:
        # PrettyWriter::PrettyPrefix(), the part of each token that lays the document out.
        self._check_limit()
        if not self._levels:
            return
        level = self._levels[-1]
        if level.in_array:
            if level.value_count > 0:
                self._write(", " if self.single_line_arrays else ",")
            if not self.single_line_arrays:
                self._write("\n" + INDENT * len(self._levels))
        else:
            if level.value_count > 0:
                self._write(",\n" if level.value_count % 2 == 0 else ": ")
            else:
                self._write("\n")
            if level.value_count % 2 == 0:
                self._write(INDENT * len(self._levels))
        level.value_count += 1

    def _check_limit(self) -> None:
        if self._limit is not None and self._size >= self._limit:
            raise _LimitReached

    def _write(self, text: str) -> None:
        self._parts.append(text)
        self._size += len(text.encode("utf-8", "surrogateescape"))


def quote(text: str) -> str:
    """A JSON string as rapidjson's Writer escapes it: quotes, backslashes and control characters."""
    escaped = []
    for character in text:
        if character in _SHORT_ESCAPES:
            escaped.append(_SHORT_ESCAPES[character])
        elif character < " ":
            escaped.append(f"\\u{ord(character):04X}")
        else:
            escaped.append(character)
    return '"' + "".join(escaped) + '"'


def decimal(value: float, single_precision: bool) -> str:
    """json_tensor.cc WriteDecimal(): %g, or %.9g/%.17g when %g does not round-trip, plus '.0'."""
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "-Infinity" if value < 0 else "Infinity"
    text = f"{value:g}"
    round_trip = np.float32(text) if single_precision else float(text)
    if round_trip != value:
        text = f"{value:.9g}" if single_precision else f"{value:.17g}"
    if "." not in text and "e" not in text:
        text += ".0"
    return text


def write_value(writer: PrettyWriter, value: object) -> None:
    """A parsed JSON value (dict, list, str, int, float, bool, None) through the writer's handlers."""
    if isinstance(value, dict):
        writer.start_object()
        for name, item in value.items():
            writer.key(name)
            write_value(writer, item)
        writer.end_object()
    elif isinstance(value, list):
        writer.start_array()
        for item in value:
            write_value(writer, item)
        writer.end_array()
    elif isinstance(value, str):
        writer.string(value)
    elif isinstance(value, bool):
        writer.boolean(value)
    elif value is None:
        writer.null()
    elif isinstance(value, int):
        writer.raw_number(str(value))
    else:
        writer.raw_number(_rapidjson_double(float(value)))  # type: ignore[arg-type]


def debug_string(value: object) -> str:
    """JsonValueToDebugString(): single-line arrays, cut after the token that passes 256 bytes."""
    writer = PrettyWriter(limit=MAX_DEBUG_STRING_BYTES)
    writer.single_line_arrays = True
    with contextlib.suppress(_LimitReached):
        write_value(writer, value)
    return writer.text()


def _rapidjson_double(value: float) -> str:
    """Writer::Double(): the shortest round-trip digits, laid out by rapidjson's Prettify()."""
    if not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("-Infinity" if value < 0 else "Infinity")
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    if value == 0:
        return sign + "0.0"
    # repr() gives the shortest digits that round-trip, as rapidjson's Grisu2 does.
    _, digit_tuple, exponent = Decimal(repr(abs(value))).normalize().as_tuple()
    digits = "".join(map(str, digit_tuple))
    length = len(digits)
    point = length + int(exponent)  # where the decimal point falls, counted from the first digit
    if length <= point <= 21:
        return sign + digits + "0" * (point - length) + ".0"
    if 0 < point <= 21:
        return sign + digits[:point] + "." + digits[point:]
    if -6 < point <= 0:
        return sign + "0." + "0" * -point + digits
    if length == 1:
        return f"{sign}{digits}e{point - 1}"
    return f"{sign}{digits[0]}.{digits[1:]}e{point - 1}"
