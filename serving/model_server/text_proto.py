"""Text-format protobuf files as TF Serving reads them (ParseProtoTextFile), with its codes and messages."""

from __future__ import annotations

import logging
from typing import TypeVar

from google.protobuf import message, text_format

from serving.model_server.errors import InvalidArgument, NotFound

logger = logging.getLogger(__name__)

Message = TypeVar("Message", bound=message.Message)


def parse_text_proto(text: str, proto: Message, source: str, type_name: str = "") -> Message:
    """Parse `text` into `proto`; INVALID_ARGUMENT naming `source` if malformed (an unknown field too)."""
    try:
        text_format.Parse(text, proto)
    except text_format.ParseError as error:
        # TF Serving's status names only the file; protobuf logs the detail, as here.
        logger.error("Error parsing text-format %s: %s", type_name or proto.DESCRIPTOR.full_name, error)
        raise InvalidArgument(f"Invalid protobuf file: '{source}'") from error
    return proto


def read_text_proto(path: str, proto: Message, type_name: str = "") -> Message:
    """Read `path` into `proto`: NOT_FOUND if missing, INVALID_ARGUMENT if unreadable or malformed."""
    try:
        with open(path, encoding="utf-8") as proto_file:
            text = proto_file.read()
    except FileNotFoundError as error:
        raise NotFound(f"{path}; No such file or directory") from error
    except (OSError, UnicodeDecodeError) as error:
        raise InvalidArgument(f"Invalid protobuf file: '{path}'") from error
    return parse_text_proto(text, proto, path, type_name)
