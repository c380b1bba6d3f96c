"""Reframe an upload the way its model's training data was built: polarity, contrast, crop, size, centre.

MNIST digits were scaled to fit 20×20 and centred by mass in 28×28; Fashion-MNIST items were
trimmed, their longer side resized to 28 and centred; CIFAR-10 frames are square. NumPy + Pillow only.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageFilter

# Working on a phone photo's full 12 megapixels buys nothing: the content ends up ~20 px tall, and
# even a digit 10 % of a photo's height is still ~40 px at this size.
ANALYSIS_MAX_SIDE = 512
# Below this difference from the background (of 255) nothing counts as content: blank paper, JPEG ringing.
MIN_CONTRAST = 24.0
LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)  # ITU-R 601-2, what Pillow's convert("L") uses


@dataclass(frozen=True)
class Framing:
    """What reframing did to one image, for the debug answer; the box is in the decoded image's pixels."""

    passed_through: bool = False
    inverted: bool = False
    content_box: tuple[int, int, int, int] | None = None
    cropped: bool = False  # the box left part of the upload out (for the drift metrics)

    def as_dict(self) -> dict[str, Any]:
        return {
            "passed_through": self.passed_through,
            "inverted": self.inverted,
            "content_box": list(self.content_box) if self.content_box else None,
        }


@dataclass(frozen=True)
class Backdrop:
    """An upload's background: its grey level at each pixel (a plane fitted to the border, which follows
    a page's uneven lighting), its noise, and whether it is lighter than the content."""

    level: np.ndarray  # float32 [H, W]
    noise: float  # standard deviation
    light: bool

    @property
    def margin(self) -> float:
        """How far from the background a pixel must be to count as content."""
        return max(MIN_CONTRAST / 2, 4 * self.noise)

    def content_contrast(self, gray: np.ndarray) -> np.ndarray:
        """How far each pixel stands out from the background towards the content's side."""
        contrast: np.ndarray = self.level - gray if self.light else gray - self.level
        return contrast


def luminance(pixels: np.ndarray) -> np.ndarray:
    return pixels if pixels.ndim == 2 else pixels @ LUMA


def border_mask(shape: tuple[int, ...]) -> np.ndarray:
    """The outer ring (2 % of the shorter side, at least 1 px): in an upload, usually background."""
    ring = max(1, round(0.02 * min(shape[:2])))
    mask = np.zeros(shape[:2], dtype=bool)
    mask[:ring], mask[-ring:], mask[:, :ring], mask[:, -ring:] = True, True, True, True
    return mask


# A few shapes at most: a model's own frame (every MNIST test image is 28×28) recurs and stays in,
# while a 512×512 upload's ring is 20,000 pixels, 0.8 MB with their indices.
@functools.lru_cache(maxsize=8)
def border_design(shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The border ring's (rows, columns) and the plane fit's design matrix [1, row, column], each
    position a fraction of the side less 0.5; read-only, as they are shared by every image of the shape.

    For a 28×28 image building these costs about as much as one pass of the fit.
    """
    height, width = shape
    rows, columns = np.nonzero(border_mask(shape))
    design = np.stack([np.ones(rows.shape), rows / height - 0.5, columns / width - 0.5], axis=1)
    for array in (rows, columns, design):
        array.flags.writeable = False
    return rows, columns, design


def median(values: np.ndarray) -> float:
    """np.median of a non-empty 1-D float64 array, to the bit (the middle value, or the mean of the two
    middle values), without its generality's overhead: several times faster on a border's ~100 values."""
    middle = values.size // 2
    if values.size % 2:
        return float(np.partition(values, middle)[middle])
    lower, upper = np.partition(values, (middle - 1, middle))[middle - 1 : middle + 1]
    return (float(lower) + float(upper)) / 2


def fit_border_plane(
    values: np.ndarray, design: np.ndarray, shape: tuple[int, int]
) -> tuple[np.ndarray, float]:
    """A plane fitted to the border's values, robustly (refitted without outliers), as the level at each
    pixel (float32 [H, W]), and the spread of the values it kept around it (a standard deviation)."""
    height, width = shape
    keep = np.ones(values.shape, dtype=bool)
    for _ in range(3):  # refit without the content that touches the border
        coefficients = np.linalg.lstsq(design[keep], values[keep], rcond=None)[0]
        deviations = np.abs(values - design @ coefficients)
        spread = 1.4826 * median(deviations[keep])
        within = deviations <= 3 * spread + 2.0
        if within.sum() < 3 or np.array_equal(within, keep):
            # Refitting the same pixels would give the same plane again, and their spread is the noise.
            break
        keep = within
    else:  # the third pass changed which pixels are kept: the noise is their spread
        spread = 1.4826 * median(deviations[keep])
    level = (
        coefficients[0]
        + coefficients[1] * (np.arange(height, dtype=np.float32)[:, np.newaxis] / height - 0.5)
        + coefficients[2] * (np.arange(width, dtype=np.float32)[np.newaxis, :] / width - 0.5)
    )
    return level.astype(np.float32), spread


def estimate_backdrop(gray: np.ndarray) -> Backdrop:
    rows, columns, design = border_design(gray.shape)
    values = gray[rows, columns].astype(np.float64)
    if values.any():
        level, noise = fit_border_plane(values, design, gray.shape)
    else:
        # A black border, as 99 % of MNIST's have: the least-squares plane through zeros is exactly
        # zero (lstsq's solution V·S⁺·Uᵀ·0 is ±0), so are its residuals and the noise; the fit costs
        # ten times what the rest of this function does.
        level, noise = np.zeros(gray.shape, dtype=np.float32), 0.0
    backdrop = Backdrop(level=level, noise=noise, light=False)
    # Whichever side departs more from the background, beyond noise and lighting residue, is the
    # content's; every other pixel each way is plenty to tell.
    difference = gray[::2, ::2] - backdrop.level[::2, ::2]
    lighter = float(np.maximum(difference - backdrop.margin, 0).sum())
    darker = float(np.maximum(-difference - backdrop.margin, 0).sum())
    return Backdrop(level=backdrop.level, noise=noise, light=darker > lighter)


def stretch_contrast(pixels: np.ndarray, backdrop: Backdrop) -> np.ndarray:
    """Light content on a black background: background to 0, the strokes' typical level to 255.

    MNIST's strokes are saturated in their middle and its background is exactly 0; a photo's
    paper is grey with noise and shading, its ink anything from black to blue: the result is grey.
    """
    contrast = backdrop.content_contrast(luminance(pixels))
    content = contrast[contrast > backdrop.margin]
    if content.size == 0:
        stretched = np.zeros_like(contrast)
    else:
        high = float(np.median(content))
        low = min(backdrop.margin, high / 2)
        stretched = np.clip((contrast - low) * (255.0 / (high - low)), 0.0, 255.0)
    return stretched if pixels.ndim == 2 else np.repeat(stretched[:, :, np.newaxis], pixels.shape[2], axis=2)


def subtract_background(pixels: np.ndarray, backdrop: Backdrop) -> np.ndarray:
    """Light content on a black background, in proportion: a product shot's white or grey backdrop
    becomes Fashion-MNIST's black and a dark garment a bright one, as its negation made them."""
    level = backdrop.level if pixels.ndim == 2 else backdrop.level[:, :, np.newaxis]
    if backdrop.light:
        content: np.ndarray = np.clip((level - pixels) * (255.0 / np.maximum(level, 1.0)), 0.0, 255.0)
    else:
        content = np.clip((pixels - level) * (255.0 / np.maximum(255.0 - level, 1.0)), 0.0, 255.0)
    return content


def content_box(contrast: np.ndarray, threshold: float) -> tuple[int, int, int, int] | None:
    """(left, top, right, bottom) of the pixels above `threshold` (0–255) on a black background; None if none.

    A light blur first, scaled to the image, so that noise and JPEG speckle do not stretch the box.
    """
    radius = max(contrast.shape) / 400.0
    if radius >= 0.5:
        image = Image.fromarray(np.clip(luminance(contrast), 0, 255).astype(np.uint8))
        contrast = np.asarray(image.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32)
    mask = luminance(contrast) > threshold
    rows = np.flatnonzero(mask.any(axis=1))
    if rows.size == 0:
        return None
    columns = np.flatnonzero(mask.any(axis=0))
    return int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1


def center_square(width: int, height: int) -> tuple[int, int, int, int]:
    side = min(width, height)
    left, top = (width - side) // 2, (height - side) // 2
    return left, top, left + side, top + side


def center_of_mass(values: np.ndarray) -> tuple[float, float] | None:
    """(row, column) in index units, or None for an all-black image."""
    total = float(values.sum())
    if total <= 0:
        return None
    return (
        float(values.sum(axis=1) @ np.arange(values.shape[0])) / total,
        float(values.sum(axis=0) @ np.arange(values.shape[1])) / total,
    )


def fit_into_frame(patch: Image.Image, frame: tuple[int, int], fit_box: int, by_mass: bool) -> Image.Image:
    """Scale the patch's longer side to `fit_box` (aspect kept, antialiased) and paste it into a black
    frame, centred by its centre of mass (MNIST) or by its box (Fashion-MNIST)."""
    frame_width, frame_height = frame
    scale = min(fit_box / max(patch.size), frame_width / patch.width, frame_height / patch.height)
    size = (max(1, round(patch.width * scale)), max(1, round(patch.height * scale)))
    resized = patch.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0) if size != patch.size else patch
    left, top = (frame_width - size[0]) / 2, (frame_height - size[1]) / 2
    center = center_of_mass(luminance(np.asarray(resized, dtype=np.float32))) if by_mass else None
    if center is not None:
        # In index units MNIST's centres of mass lie at 14.0 ± 0.5 of 28, i.e. at frame / 2.
        top, left = frame_height / 2 - center[0], frame_width / 2 - center[1]
    left = int(np.clip(round(left), 0, frame_width - size[0]))
    top = int(np.clip(round(top), 0, frame_height - size[1]))
    canvas = Image.new(resized.mode, frame, 0)
    canvas.paste(resized, (left, top))
    return canvas


def limit_size(image: Image.Image, max_side: int = ANALYSIS_MAX_SIDE) -> tuple[Image.Image, int]:
    """Box-reduce a very large image by an integer factor; returns the factor to map boxes back."""
    factor = -(-max(image.size) // max_side)
    return (image.reduce(factor), factor) if factor > 1 else (image, 1)


def already_framed(gray: np.ndarray, frame: tuple[int, int], fit_box: int, by_mass: bool) -> bool:
    """At the model's size and light on dark; for digits also `fit_box` tall or wide and centred by mass
    as MNIST's are (longer side 18–20 px above faint grey, centre of mass 14 ± 0.5): like training data."""
    if gray.shape != (frame[1], frame[0]) or estimate_backdrop(gray).light:
        return False
    if not by_mass:
        return True
    box = content_box(gray, MIN_CONTRAST)
    center = center_of_mass(gray)
    if box is None or center is None:
        return False
    longer_side = max(box[2] - box[0], box[3] - box[1])
    return (
        fit_box - 4 <= longer_side <= fit_box
        and abs(center[0] - frame[1] / 2) <= 1.5
        and abs(center[1] - frame[0] / 2) <= 1.5
    )
