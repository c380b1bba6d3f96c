"""Size limits checked from image headers alone, before anything is decoded.

A few kilobytes of PNG can declare gigapixels; reading only the header (Pillow's `open`
does not decode) refuses such requests before they cost memory or CPU time.
"""

from __future__ import annotations

import io
import struct
import warnings
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image

from serving.gateway.errors import InvalidImageError
from serving.gateway.preprocess import ALLOWED_FORMATS

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class ImageLimits:
    max_pixels: int  # per image
    max_side: int  # per image side
    max_request_pixels: int  # all images of a request together


def declared_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the header, or None when the header cannot be read (the decoder says why)."""
    # A PNG must open with its IHDR chunk, width and height at bytes 16-24: read there, the
    # most common upload skips a Pillow open here (the decoder opens it again anyway).
    if data[:8] == _PNG_SIGNATURE and data[12:16] == b"IHDR" and len(data) >= 24:
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS) as image:
                return image.size
    except Image.DecompressionBombError as error:  # over twice Pillow's own limit (Image.MAX_IMAGE_PIXELS)
        raise InvalidImageError(
            f"the image is too large to decode safely: {error}", code="image_too_large"
        ) from None
    except Exception:  # noqa: BLE001 - any unreadable header is the decoder's to report, as a 400
        return None


def check_image_sizes(images: Sequence[bytes], limits: ImageLimits) -> None:
    """Raise InvalidImageError (code image_too_large) when a declared size is over a limit."""
    total = 0
    for index, data in enumerate(images):
        size = declared_size(data)
        if size is None:
            continue
        width, height = size
        where = f"image {index}: " if len(images) > 1 else ""
        if width > limits.max_side or height > limits.max_side:
            raise InvalidImageError(
                f"{where}the image is {width}x{height} pixels; each side may be at most "
                f"{limits.max_side} pixels",
                code="image_too_large",
            )
        if width * height > limits.max_pixels:
            raise InvalidImageError(
                f"{where}the image is {width}x{height} pixels; at most {limits.max_pixels} "
                "pixels are accepted",
                code="image_too_large",
            )
        total += width * height
        if total > limits.max_request_pixels:
            raise InvalidImageError(
                f"the images of this request add up to more than {limits.max_request_pixels} "
                "pixels; send fewer or smaller images",
                code="image_too_large",
            )
