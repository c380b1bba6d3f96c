"""The background estimate's shortcuts (black border, early exit of the refit, partition median, design
per shape) against the plain three-pass fit they replace: every field must come out the same, to the bit.
"""

from __future__ import annotations

import numpy as np
import pytest

from serving.gateway import content_normalization as framing


def plain_backdrop(gray: np.ndarray) -> framing.Backdrop:
    """estimate_backdrop as first written, with none of the shortcuts: the oracle the fast one must match."""
    height, width = gray.shape
    rows, columns = np.nonzero(framing.border_mask(gray.shape))
    values = gray[rows, columns].astype(np.float64)
    design = np.stack([np.ones_like(values), rows / height - 0.5, columns / width - 0.5], axis=1)
    keep = np.ones(values.shape, dtype=bool)
    for _ in range(3):
        coefficients = np.linalg.lstsq(design[keep], values[keep], rcond=None)[0]
        residuals = values - design @ coefficients
        spread = 1.4826 * float(np.median(np.abs(residuals[keep])))
        within = np.abs(residuals) <= 3 * spread + 2.0
        if within.sum() < 3:
            break
        keep = within
    level = (
        coefficients[0]
        + coefficients[1] * (np.arange(height, dtype=np.float32)[:, np.newaxis] / height - 0.5)
        + coefficients[2] * (np.arange(width, dtype=np.float32)[np.newaxis, :] / width - 0.5)
    ).astype(np.float32)
    noise = 1.4826 * float(np.median(np.abs(residuals[keep])))
    backdrop = framing.Backdrop(level=level, noise=noise, light=False)
    difference = gray[::2, ::2] - level[::2, ::2]
    lighter = float(np.maximum(difference - backdrop.margin, 0).sum())
    darker = float(np.maximum(-difference - backdrop.margin, 0).sum())
    return framing.Backdrop(level=level, noise=noise, light=darker > lighter)


def synthetic_grays(rng: np.random.Generator) -> list[np.ndarray]:
    """Shapes down to 1×1 (a fit with fewer points than unknowns), black, constant, noisy and shaded
    backgrounds, content touching the border and content well inside it."""
    grays = []
    shapes = ((1, 1), (1, 5), (5, 1), (2, 7), (3, 3), (28, 28), (32, 32), (30, 28), (100, 60), (480, 640))
    for height, width in shapes:
        grays += [np.full((height, width), value, dtype=np.float32) for value in (0.0, 17.0, 255.0, 76.245)]
        grays.append(rng.integers(0, 256, (height, width)).astype(np.float32))
        rows, columns = np.mgrid[:height, :width]
        shading = 180 + 30 * rows / height - 20 * columns / width + rng.normal(0, 4, (height, width))
        grays.append(np.clip(shading, 0, 255).astype(np.float32))
        black = np.zeros((height, width), dtype=np.float32)
        top, left = height // 4, width // 3
        black[top : max(top + 1, 3 * height // 4), left : max(left + 1, width // 2)] = 250
        grays.append(black)
        touching = black.copy()
        touching[0, : max(1, width // 3)] = 200  # a stroke reaching the edge
        grays.append(touching)
        grays.append(255 - touching)
    return grays


def test_the_fast_estimate_matches_the_plain_fit_to_the_bit(test_images):
    rng = np.random.default_rng(5)
    grays = synthetic_grays(rng)
    for name in ("mnist", "fashion_mnist", "cifar10"):
        images, _ = test_images[name]
        grays += [framing.luminance(image.squeeze().astype(np.float32)) for image in images]
    border_is_black = [not gray[framing.border_mask(gray.shape)].any() for gray in grays]
    assert sum(border_is_black) > 100 and not all(border_is_black)  # both paths are exercised
    for gray in grays:
        fast, plain = framing.estimate_backdrop(gray), plain_backdrop(gray)
        assert fast.level.dtype == np.float32 and fast.level.shape == gray.shape
        np.testing.assert_array_equal(fast.level, plain.level)
        assert (fast.noise, fast.light) == (plain.noise, plain.light)


@pytest.mark.parametrize("size", [1, 2, 3, 4, 7, 8, 108, 109, 2000])
def test_median_is_numpys_to_the_bit(size):
    rng = np.random.default_rng(size)
    for values in (rng.normal(0, 50, size), rng.integers(0, 4, size).astype(np.float64), np.zeros(size)):
        assert framing.median(values) == float(np.median(values))


def test_the_border_design_is_shared_read_only_and_matches_the_mask():
    rows, columns, design = framing.border_design((28, 30))
    assert framing.border_design((28, 30))[2] is design
    expected_rows, expected_columns = np.nonzero(framing.border_mask((28, 30)))
    np.testing.assert_array_equal(rows, expected_rows)
    np.testing.assert_array_equal(columns, expected_columns)
    np.testing.assert_array_equal(design[:, 1], expected_rows / 28 - 0.5)
    for array in (rows, columns, design):
        with pytest.raises(ValueError, match="read-only"):
            array[0] = 1
