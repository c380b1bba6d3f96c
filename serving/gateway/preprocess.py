"""Uploaded image bytes to the normalized tensor a model expects: pure functions, no Flask, no gRPC.

`preprocess_images(list_of_bytes, spec)` decodes with Pillow, applies EXIF orientation, converts
to the model's channels, reframes the image as the model's spec says and scales pixels to [0, 1].
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from serving.gateway import content_normalization as framing
from serving.gateway.errors import InvalidImageError

DEFAULT_MAX_PIXELS = 40_000_000
# Only these decoders run on uploads: each other Pillow plugin is attack surface for no use
# (EPS even runs Ghostscript). Phones' multi-picture JPEGs (MPO) open through "JPEG".
ALLOWED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF")

# What each mode means, as flags; a spec may name a mode and override any flag. "resize" (the
# default, for exports that name no mode) squeezes the whole image into H×W as before.
MODES: dict[str, dict[str, Any]] = {
    "resize": {
        "invert_light_background": False,
        "contrast": "none",
        "crop": "none",
        "center": "box",
        "content_threshold": 0.2,
    },
    # MNIST: light on black, contrast-normalized, longer side 20 px, centred by mass in 28×28.
    "mnist_digit": {
        "invert_light_background": True,
        "contrast": "stretch",
        "crop": "content",
        "fit_box": 20,
        "center": "mass",
        "content_threshold": 0.2,
    },
    # Fashion-MNIST: negated product shots, trimmed to the item, longer side to the frame, centred.
    "centered_object": {
        "invert_light_background": True,
        "contrast": "subtract_background",
        "crop": "content",
        "center": "box",
        "content_threshold": 0.05,
    },
    # CIFAR-10: a square photo, resized with antialiasing.
    "full_frame": {
        "invert_light_background": False,
        "contrast": "none",
        "crop": "center_square",
        "center": "box",
        "content_threshold": 0.2,
    },
}
CONTRASTS = ("none", "stretch", "subtract_background")
CROPS = ("none", "center_square", "content")
CENTERS = ("box", "mass")


@dataclass(frozen=True)
class PreprocessingSpec:
    """What a model's input looks like and how to reframe an upload into it; read from the model's
    assets/preprocessing.json. Flags left as None take the value `mode` gives them."""

    height: int
    width: int
    channels: int
    light_on_dark: bool = False
    scale: float = 255.0
    mode: str = "resize"
    invert_light_background: bool | None = None  # a light-background upload is negated first
    # "none", "stretch" (background 0, strokes 255) or "subtract_background" (background 0); both
    # of the latter answer light content on black, inverting a light-background upload.
    contrast: str | None = None
    crop: str | None = None  # "none" (squeeze the whole image), "center_square", "content" (its bounding box)
    fit_box: int | None = None  # the cropped region's longer side in the model input; None: the frame
    center: str | None = None  # place the region by its "box" or its centre of "mass"
    content_threshold: float | None = None  # fraction of the contrast above which a pixel is content

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise ValueError(f"models with {self.channels} channels are not supported (1 or 3)")
        if self.height <= 0 or self.width <= 0:
            raise ValueError(f"model input size {self.height}x{self.width} is not positive")
        if self.mode not in MODES:
            raise ValueError(
                f"preprocessing mode {self.mode!r} is unknown; expected one of {', '.join(MODES)}"
            )
        defaults = {"fit_box": max(self.height, self.width), **MODES[self.mode]}
        for field, default in defaults.items():
            if getattr(self, field) is None:
                object.__setattr__(self, field, default)
        for field, allowed in (("contrast", CONTRASTS), ("crop", CROPS), ("center", CENTERS)):
            if getattr(self, field) not in allowed:
                raise ValueError(
                    f"preprocessing {field} {getattr(self, field)!r} is not one of {', '.join(allowed)}"
                )
        if not isinstance(self.fit_box, int) or self.fit_box <= 0:
            raise ValueError(f"preprocessing fit_box must be a positive integer, got {self.fit_box!r}")
        if not 0 < float(self.content_threshold or 0) < 1:
            raise ValueError(
                f"preprocessing content_threshold must be in (0, 1), got {self.content_threshold!r}"
            )

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any], **fallback: Any) -> PreprocessingSpec:
        merged = {**fallback, **{k: v for k, v in values.items() if k in cls.__dataclass_fields__}}
        return cls(**merged)


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode bytes into an upright Pillow image; InvalidImageError says what was wrong."""
    if not data:
        raise InvalidImageError("the image is empty (0 bytes)", code="empty_image")
    # `max_pixels`, checked from the header before any pixel is decoded, is what refuses large
    # images (the default, 40 M, is under Pillow's DecompressionBombWarning at 89 M pixels;
    # Pillow itself raises DecompressionBombError at twice that). No warnings.catch_warnings()
    # here to make that warning an error: it swaps the process-wide filter list, which is not
    # thread-safe, and a gateway worker decodes on many threads at once.
    try:
        image = Image.open(io.BytesIO(data), formats=ALLOWED_FORMATS)
        width, height = image.size
        if width * height > max_pixels:
            raise InvalidImageError(
                f"the image is {width}x{height} pixels; at most {max_pixels} pixels are accepted",
                code="image_too_large",
            )
        image.load()
        # In place: without an Orientation tag the copying variant copies every pixel for nothing.
        ImageOps.exif_transpose(image, in_place=True)
        return image
    except InvalidImageError:
        raise
    except Image.DecompressionBombError as error:
        raise InvalidImageError(
            f"the image is too large to decode safely: {error}", code="image_too_large"
        ) from None
    except UnidentifiedImageError:
        raise InvalidImageError(
            "the data is not an image in a format we can read (PNG, JPEG, GIF, BMP, WebP, TIFF)"
        ) from None
    # Pillow's parsers raise more than OSError on crafted files (fuzzing found a TypeError in a
    # TIFF's strip offsets): whatever decoding untrusted bytes raises means they are no image.
    except Exception as error:  # noqa: BLE001
        raise InvalidImageError(f"the image could not be decoded: {error}") from None


def _flatten_alpha(image: Image.Image) -> Image.Image:
    """Composite transparency onto white, as the image looks on a page."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image


def _to_8bit(image: Image.Image) -> Image.Image:
    """Scale 16-bit and 32-bit grayscale down to 8 bits instead of clipping them."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        low, high = float(array.min()), float(array.max())
        peak = 65535.0 if image.mode.startswith("I;16") else (high if high > 255 else 255.0)
        scaled = np.clip(array / (peak or 1.0) * 255.0, 0, 255) if high > 255 or low < 0 else array
        return Image.fromarray(scaled.astype(np.uint8), mode="L")
    return image


def _convert(image: Image.Image, mode: str) -> Image.Image:
    try:
        return image.convert(mode)
    except ValueError:  # some modes (a LAB TIFF) Pillow converts to RGB only
        return image.convert("RGB").convert(mode)


def reframe(image: Image.Image, spec: PreprocessingSpec) -> tuple[Image.Image, framing.Framing]:
    """A decoded image to the model's H×W and mode (8-bit), reframed as the spec says, and what was done."""
    image = _to_8bit(_flatten_alpha(image))
    mode = "L" if spec.channels == 1 else "RGB"
    if image.mode != mode:  # convert() to the same mode would copy the pixels
        image = _convert(image, mode)
    frame = (spec.width, spec.height)
    if spec.crop == "none" and not spec.invert_light_background and spec.contrast == "none":
        if image.size != frame:
            image = image.resize(frame, Image.Resampling.LANCZOS)
        return image, framing.Framing()
    if (spec.crop == "center_square" and image.size == frame and (spec.fit_box or 0) >= max(frame)
            and not spec.invert_light_background and spec.contrast == "none"):
        # Already the model's size (a CIFAR-10 frame): the square crop and the fit below would
        # give back the very same pixels, after four copies.
        return image, framing.Framing(content_box=(0, 0, *frame))
    reduced, factor = framing.limit_size(image)
    pixels = np.asarray(reduced, dtype=np.float32)
    gray = framing.luminance(pixels)
    if spec.crop == "content" and framing.already_framed(
        gray, frame, int(spec.fit_box or 0), by_mass=spec.center == "mass"
    ):
        return image, framing.Framing(passed_through=True)
    inverted = False
    if spec.invert_light_background or spec.contrast != "none":
        backdrop = framing.estimate_backdrop(gray)
        inverted = backdrop.light
        # Both contrast normalizations answer light content on black, whatever the upload's polarity.
        if spec.contrast == "stretch":
            pixels = framing.stretch_contrast(pixels, backdrop)
        elif spec.contrast == "subtract_background":
            pixels = framing.subtract_background(pixels, backdrop)
        elif inverted:
            pixels = 255.0 - pixels
    box = None
    if spec.crop == "content":
        box = framing.content_box(pixels, 255.0 * float(spec.content_threshold or 0))
    elif spec.crop == "center_square":
        box = framing.center_square(reduced.width, reduced.height)
    left, top, right, bottom = box or (0, 0, reduced.width, reduced.height)
    patch = Image.fromarray(np.rint(pixels[top:bottom, left:right]).astype(np.uint8))
    if spec.crop == "none":
        framed = patch.resize(frame, Image.Resampling.LANCZOS) if patch.size != frame else patch
    else:
        framed = framing.fit_into_frame(patch, frame, int(spec.fit_box or 0), by_mass=spec.center == "mass")
    content_box = (
        left * factor,
        top * factor,
        min(right * factor, image.width),
        min(bottom * factor, image.height),
    )
    cropped = box is not None and box != (0, 0, reduced.width, reduced.height)
    return framed, framing.Framing(inverted=inverted, content_box=content_box if box else None,
                                   cropped=cropped)


def image_to_array(image: Image.Image, spec: PreprocessingSpec) -> np.ndarray:
    """One decoded image to float32 [H, W, C] in [0, 1]."""
    return _to_array(reframe(image, spec)[0], spec)


def _to_array(image: Image.Image, spec: PreprocessingSpec, out: np.ndarray | None = None) -> np.ndarray:
    """The 8-bit image as float32 [H, W, C] / scale, written into `out` when given."""
    pixels = np.asarray(image)
    if pixels.ndim == 2:
        pixels = pixels[:, :, np.newaxis]
    scaled: np.ndarray = np.divide(pixels, np.float32(spec.scale), out=out, dtype=np.float32)
    return scaled


def preprocess_images_explained(
    images: Sequence[bytes], spec: PreprocessingSpec, max_pixels: int = DEFAULT_MAX_PIXELS
) -> tuple[np.ndarray, list[framing.Framing]]:
    """A batch of encoded images to float32 [N, H, W, C], and per image what reframing did.

    The index of a bad image is in the error.
    """
    batch = np.empty((len(images), spec.height, spec.width, spec.channels), dtype=np.float32)
    framings = []
    for index, data in enumerate(images):
        try:
            image, done = reframe(decode_image(data, max_pixels), spec)
        except InvalidImageError as error:
            if len(images) == 1:
                raise
            raise InvalidImageError(f"image {index}: {error.message}", code=error.code) from None
        _to_array(image, spec, out=batch[index])
        framings.append(done)
    return batch, framings


def preprocess_images(
    images: Sequence[bytes], spec: PreprocessingSpec, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """A batch of encoded images to float32 [N, H, W, C]; the index of a bad image is in the error."""
    return preprocess_images_explained(images, spec, max_pixels)[0]


def model_input_png(array: np.ndarray, spec: PreprocessingSpec) -> bytes:
    """One model input (float32 [H, W, C]) as the 8-bit PNG it was made from: what the model saw."""
    pixels = np.clip(np.rint(array * np.float32(spec.scale)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels[:, :, 0] if pixels.shape[-1] == 1 else pixels)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
