"""Turn what a caller holds (a path, bytes, a file object, a PIL image or a NumPy array)
into encoded image bytes for the gateway. Pillow and NumPy are needed only for the last two.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import IO, Any, Protocol, Union


class PILImage(Protocol):
    """A PIL image, by what is used of it (Pillow is an optional dependency)."""

    @property
    def mode(self) -> str: ...
    def save(self, fp: IO[bytes], format: str | None = None, **params: Any) -> None: ...


class ImageArray(Protocol):
    """A NumPy array, or anything `numpy.asarray` takes that has a dtype (NumPy is optional)."""

    def __array__(self) -> Any: ...
    @property
    def dtype(self) -> Any: ...


ImageInput = Union[str, "os.PathLike[str]", bytes, bytearray, memoryview, IO[bytes], PILImage, ImageArray]

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"BM", "image/bmp"),
    (b"II*\x00", "image/tiff"),
    (b"MM\x00*", "image/tiff"),
)


def content_type(data: bytes) -> str:
    """The image/* type the bytes start like, else application/octet-stream (the gateway sniffs anyway)."""
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    for signature, kind in _SIGNATURES:
        if data.startswith(signature):
            return kind
    return "application/octet-stream"


def encode_image(image: ImageInput) -> tuple[str, bytes, str]:
    """(file name, encoded bytes, content type) for one image."""
    if isinstance(image, (bytes, bytearray, memoryview)):
        data = bytes(image)
        return "image", data, content_type(data)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        data = path.read_bytes()
        return path.name, data, content_type(data)
    if hasattr(image, "read"):
        data = image.read()
        if not isinstance(data, bytes):
            raise TypeError("file objects must be opened in binary mode ('rb')")
        return Path(str(getattr(image, "name", "image"))).name, data, content_type(data)
    if hasattr(image, "save") and hasattr(image, "mode"):
        return _encode_pil(image)
    if hasattr(image, "__array__") and hasattr(image, "dtype"):
        return encode_image(_array_to_pil(image))
    raise TypeError(
        f"cannot send {type(image).__name__} as an image; "
        "give a path, bytes, a binary file, a PIL image or an array"
    )


_ORIENTATION = 0x0112  # the EXIF tag
# What each mode is sent as, losslessly and the same with every Pillow: PNG where it holds the
# mode; TIFF (deflated) for CMYK, YCbCr, LAB, 32-bit and float grayscale, which the gateway decodes
# as it would that file. A mode Pillow writes in neither goes as the mode it converts to.
_PNG_MODES = frozenset({"1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I;16B"})
_TIFF_MODES = frozenset({"CMYK", "YCbCr", "LAB", "I", "F", "PA", "I;16L", "RGBX"})
_CONVERTED = {"La": "LA", "RGBa": "RGBA", "I;16N": "I", "I;16S": "I", "I;16BS": "I", "I;16LS": "I"}


def _encode_pil(image: Any) -> tuple[str, bytes, str]:
    """A PIL image as the gateway would see its file: upright, every pixel as it is."""
    if image.getexif().get(_ORIENTATION, 1) != 1:
        # Opened from a camera JPEG, the pixels are as stored: the gateway turns a file upright by
        # its Orientation tag, but the formats sent here would not carry the tag.
        from PIL import ImageOps

        image = ImageOps.exif_transpose(image)
    if image.mode not in _PNG_MODES and image.mode not in _TIFF_MODES:  # HSV, premultiplied alpha
        try:
            image = image.convert(_CONVERTED.get(image.mode, "RGB"))
        except ValueError:
            raise ValueError(
                f"cannot send a PIL image of mode {image.mode}; convert it to RGB or L first"
            ) from None
    buffer = io.BytesIO()
    if image.mode in _PNG_MODES:
        image.save(buffer, format="PNG")
        return "image.png", buffer.getvalue(), "image/png"
    # Uncompressed, a 6 MP CMYK photo would be 23 MiB, over the gateway's request limit. Deflated
    # YCbCr reads back as RGB (libtiff converts it), so that one stays uncompressed.
    image.save(buffer, format="TIFF", compression=None if image.mode == "YCbCr" else "tiff_adobe_deflate")
    return "image.tif", buffer.getvalue(), "image/tiff"


def _array_to_pil(array: Any) -> Any:
    """uint8 [H, W], [H, W, 1], [H, W, 3] or [H, W, 4]; floats are taken as values in [0, 1]."""
    try:
        import numpy as np
        from PIL import Image
    except ImportError:
        raise ImportError(
            "sending NumPy arrays needs Pillow and NumPy: pip install 'pixelgate-client[images]'"
        ) from None
    values = np.asarray(array)
    if values.ndim == 3 and values.shape[-1] == 1:
        values = values[..., 0]
    if values.ndim not in (2, 3) or (values.ndim == 3 and values.shape[-1] not in (3, 4)):
        raise ValueError(
            f"an image array must be [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got shape {values.shape}"
        )
    if np.issubdtype(values.dtype, np.floating):
        if values.size and (np.nanmin(values) < 0 or np.nanmax(values) > 1):
            raise ValueError("a float image array must hold values in [0, 1]; send uint8 for 0..255")
        values = np.round(np.nan_to_num(values) * 255)
    elif values.dtype != np.uint8 and values.size and (values.min() < 0 or values.max() > 255):
        raise ValueError(
            f"an integer image array must hold values in 0..255, got {values.min()}..{values.max()}"
        )
    return Image.fromarray(values.astype(np.uint8))
