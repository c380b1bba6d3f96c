"""Preprocessing is pure: in-memory images in, normalized tensors out."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageDraw

from serving.gateway.errors import InvalidImageError
from serving.gateway.preprocess import (
    PreprocessingSpec,
    decode_image,
    image_to_array,
    model_input_png,
    preprocess_images,
    preprocess_images_explained,
)

MNIST = PreprocessingSpec(height=28, width=28, channels=1, light_on_dark=True)
CIFAR = PreprocessingSpec(height=32, width=32, channels=3)


def encode(image: Image.Image, image_format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def test_a_28x28_grayscale_png_passes_through_exactly():
    pixels = np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)
    batch = preprocess_images([encode(Image.fromarray(pixels))], MNIST)
    assert batch.shape == (1, 28, 28, 1) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[0, :, :, 0], pixels / np.float32(255))


@pytest.mark.parametrize(
    ("mode", "size", "spec", "shape"),
    [
        ("RGB", (640, 480), MNIST, (28, 28, 1)),
        ("L", (100, 100), CIFAR, (32, 32, 3)),
        ("RGBA", (32, 32), CIFAR, (32, 32, 3)),
        ("P", (50, 20), CIFAR, (32, 32, 3)),
        ("CMYK", (40, 40), MNIST, (28, 28, 1)),
        ("I;16", (28, 28), MNIST, (28, 28, 1)),
        ("LAB", (30, 40), MNIST, (28, 28, 1)),  # Pillow converts LAB to RGB only
        ("LAB", (30, 40), CIFAR, (32, 32, 3)),
        ("YCbCr", (30, 40), MNIST, (28, 28, 1)),
        ("F", (30, 40), MNIST, (28, 28, 1)),
    ],
)
def test_any_mode_and_size_becomes_the_model_input(mode, size, spec, shape):
    image = Image.new(mode, size)
    image_format = "TIFF" if mode in ("CMYK", "LAB", "YCbCr", "F") else "PNG"
    array = image_to_array(decode_image(encode(image, image_format)), spec)
    assert array.shape == shape
    assert array.dtype == np.float32
    assert 0.0 <= array.min() <= array.max() <= 1.0


@pytest.mark.parametrize("image_format", ["PNG", "JPEG", "GIF", "BMP", "WEBP", "TIFF"])
def test_common_formats_decode(image_format):
    image = Image.new("RGB", (32, 32), (200, 10, 10))
    array = image_to_array(decode_image(encode(image, image_format)), CIFAR)
    assert array[..., 0].mean() > 0.6 and array[..., 1].mean() < 0.2


def test_transparent_pixels_become_white():
    image = Image.new("RGBA", (28, 28), (0, 0, 0, 0))
    assert image_to_array(decode_image(encode(image)), MNIST).min() == 1.0


def test_transparent_pixels_of_a_palette_image_with_alpha_become_white():
    image = Image.new("PA", (28, 28), (0, 0))  # palette index 0 (black), fully transparent
    assert decode_image(encode(image, "TIFF")).mode == "PA"
    assert image_to_array(decode_image(encode(image, "TIFF")), MNIST).min() == 1.0


def test_16_bit_grayscale_is_scaled_not_clipped():
    pixels = np.full((28, 28), 32768, dtype=np.uint16)
    image = Image.fromarray(pixels)
    value = image_to_array(decode_image(encode(image)), MNIST)[0, 0, 0]
    assert 0.45 < value < 0.55


def test_exif_orientation_is_applied():
    image = Image.new("L", (40, 20), 0)  # wide; EXIF says rotate 90° -> tall
    exif = Image.Exif()
    exif[0x0112] = 6
    decoded = decode_image(encode(image, "JPEG", exif=exif.tobytes()))
    assert decoded.size == (20, 40)


@pytest.mark.parametrize(
    ("data", "code"),
    [
        (b"", "empty_image"),
        (b"this is not an image", "invalid_image"),
        (encode(Image.new("RGB", (64, 64)))[:60], "invalid_image"),
    ],
)
def test_bad_bytes_raise_invalid_image(data, code):
    with pytest.raises(InvalidImageError) as raised:
        decode_image(data)
    assert raised.value.code == code


def test_too_many_pixels_are_refused_before_decoding():
    with pytest.raises(InvalidImageError) as raised:
        decode_image(encode(Image.new("L", (2000, 2000))), max_pixels=1_000_000)
    assert raised.value.code == "image_too_large"


def test_batch_error_names_the_bad_image():
    good = encode(Image.new("L", (28, 28)))
    with pytest.raises(InvalidImageError, match="image 1"):
        preprocess_images([good, b"junk"], MNIST)


def test_spec_rejects_unsupported_channels():
    with pytest.raises(ValueError, match="channels"):
        PreprocessingSpec(height=28, width=28, channels=4)


# Reframing uploads the way the training data was built (spec modes).

DIGIT = PreprocessingSpec(height=28, width=28, channels=1, light_on_dark=True, mode="mnist_digit")
OBJECT = PreprocessingSpec(height=28, width=28, channels=1, light_on_dark=True, mode="centered_object")
SQUARE = PreprocessingSpec(height=32, width=32, channels=3, mode="full_frame")


def digit_stroke() -> np.ndarray:
    """A white '7'-like stroke on black, 28×28, drawn as MNIST would hold it (20 px tall, centred)."""
    pixels = np.zeros((28, 28), dtype=np.uint8)
    pixels[4:7, 8:20] = 255
    for row in range(7, 24):
        column = 19 - (row - 7) // 2
        pixels[row, column - 1 : column + 2] = 255
    return pixels


def on_canvas(digit: np.ndarray, size=(640, 480), at=(400, 100), scale=8, paper=230, ink=30) -> Image.Image:
    """The digit enlarged `scale` times as dark ink on light paper (or the reverse), at `at` on a canvas."""
    big = Image.fromarray(digit).resize((28 * scale, 28 * scale), Image.Resampling.BICUBIC)
    coverage = Image.new("L", size, 0)
    coverage.paste(big, at)
    return Image.composite(Image.new("L", size, ink), Image.new("L", size, paper), coverage)


def center_of_mass(array: np.ndarray) -> tuple[float, float]:
    rows, columns = np.indices(array.shape)
    return float((array * rows).sum() / array.sum()), float((array * columns).sum() / array.sum())


def bounding_box_side(array: np.ndarray, threshold: float = 0.1) -> int:
    rows, columns = np.nonzero(array > threshold)
    return int(max(rows.max() - rows.min() + 1, columns.max() - columns.min() + 1))


def test_modes_fill_in_flags_and_explicit_flags_win():
    assert (DIGIT.crop, DIGIT.fit_box, DIGIT.center, DIGIT.contrast) == ("content", 20, "mass", "stretch")
    assert (OBJECT.fit_box, OBJECT.center) == (28, "box")
    assert SQUARE.crop == "center_square"
    assert PreprocessingSpec(height=28, width=28, channels=1, mode="mnist_digit", fit_box=24).fit_box == 24
    legacy = PreprocessingSpec.from_mapping(
        {"light_on_dark": True, "dataset": "mnist"}, height=28, width=28, channels=1
    )
    assert (legacy.mode, legacy.crop, legacy.invert_light_background) == ("resize", "none", False)


@pytest.mark.parametrize(
    "values",
    [
        {"mode": "sharpen"},
        {"mode": "mnist_digit", "crop": "middle"},
        {"center": "top"},
        {"contrast": "max"},
        {"fit_box": 0},
        {"fit_box": 2.5},
        {"content_threshold": 1.5},
    ],
)
def test_spec_rejects_unknown_modes_and_flags(values):
    with pytest.raises(ValueError, match="preprocessing"):
        PreprocessingSpec.from_mapping(values, height=28, width=28, channels=1)


def test_exported_spec_reads_back():
    from training.export import UPLOAD_PREPROCESSING

    for name, values in UPLOAD_PREPROCESSING.items():
        spec = PreprocessingSpec.from_mapping(
            {"dataset": name, "classes": ["a"], **values}, height=28, width=28, channels=1
        )
        assert spec.mode == values["mode"]


def test_a_spec_without_mode_resizes_exactly_as_before():
    image = on_canvas(digit_stroke()).convert("RGB")
    expected = (
        np.asarray(image.convert("L").resize((28, 28), Image.Resampling.LANCZOS), dtype=np.float32) / 255
    )
    np.testing.assert_array_equal(image_to_array(image, MNIST)[:, :, 0], expected)


@pytest.mark.parametrize(("name", "spec"), [("mnist", DIGIT), ("fashion_mnist", OBJECT), ("cifar10", SQUARE)])
def test_real_test_set_images_pass_through_unchanged(test_images, name, spec):
    images, _ = test_images[name]
    batch, framings = preprocess_images_explained(
        [encode(Image.fromarray(i.squeeze())) for i in images], spec
    )
    np.testing.assert_array_equal(batch, images.astype(np.float32) / np.float32(255))
    if spec.crop == "content":
        assert all(framing.passed_through for framing in framings)
    if spec.crop == "center_square":  # the whole frame is the square, as the general path reports it
        assert {framing.content_box for framing in framings} == {(0, 0, 32, 32)}


@pytest.mark.parametrize(("paper", "ink"), [(230, 30), (250, 90), (20, 220)])
def test_a_digit_on_a_large_canvas_is_framed_like_mnist(paper, ink):
    digit = digit_stroke()
    image = on_canvas(digit, paper=paper, ink=ink)
    (array,) = preprocess_images_explained([encode(image, "JPEG", quality=80)], DIGIT)[0][:, :, :, 0]
    assert array[0, 0] == 0 and array.max() == 1.0  # black background, saturated strokes
    assert bounding_box_side(array) in (20, 21)
    row, column = center_of_mass(array)
    assert abs(row - 14) <= 0.5 and abs(column - 14) <= 0.5
    # The same stroke, where MNIST would have put it.
    reference_row, reference_column = center_of_mass(digit.astype(np.float32))
    reference = np.roll(
        digit.astype(np.float32) / 255, (round(14 - reference_row), round(14 - reference_column)), axis=(0, 1)
    )
    overlap = (array * reference).sum() / np.sqrt((array**2).sum() * (reference**2).sum())
    assert overlap > 0.8


def test_inversion_follows_the_background_not_the_average():
    # A bold dark '0' covers most of the page: the page is still the background.
    image = Image.new("L", (300, 300), 230)
    ImageDraw.Draw(image).ellipse((30, 8, 270, 292), outline=30, width=100)
    assert np.asarray(image).mean() < 128
    _, framings = preprocess_images_explained([encode(image)], DIGIT)
    assert framings[0].inverted


def test_uneven_lighting_and_noise_do_not_reach_the_model_input():
    clean = on_canvas(digit_stroke(), paper=220, ink=40)
    shading = np.linspace(0.8, 1.1, clean.width, dtype=np.float32)[np.newaxis, :]
    noise = np.random.default_rng(1).normal(0, 8, (clean.height, clean.width))
    noisy = np.clip(np.asarray(clean, dtype=np.float32) * shading + noise, 0, 255).astype(np.uint8)
    expected, array = preprocess_images(
        [encode(clean), encode(Image.fromarray(noisy), "JPEG", quality=60)], DIGIT
    )[:, :, :, 0]
    assert np.count_nonzero(array[expected == 0]) <= 5
    assert np.abs(array - expected).mean() < 0.03


def test_content_box_is_reported_in_the_uploads_pixels():
    image = on_canvas(digit_stroke(), size=(2400, 1800), at=(1600, 400), scale=20)
    _, framings = preprocess_images_explained([encode(image, "JPEG")], DIGIT)
    left, top, right, bottom = framings[0].content_box
    # The stroke spans columns 8..19 and rows 4..23 of the 28×28 digit, enlarged 20× at (1600, 400).
    assert abs(left - (1600 + 8 * 20)) < 30 and abs(right - (1600 + 20 * 20)) < 30
    assert abs(top - (400 + 4 * 20)) < 30 and abs(bottom - (400 + 24 * 20)) < 30


@pytest.mark.parametrize("size", [(1, 1), (1, 300), (640, 480)])
@pytest.mark.parametrize("spec", [DIGIT, OBJECT, SQUARE])
@pytest.mark.parametrize("shade", [0, 255])
def test_blank_and_degenerate_images_give_a_valid_input(size, spec, shade):
    batch = preprocess_images([encode(Image.new("L", size, shade))], spec)
    assert batch.shape == (1, spec.height, spec.width, spec.channels)
    assert np.isfinite(batch).all() and 0 <= batch.min() <= batch.max() <= 1


def test_a_product_shot_is_negated_trimmed_and_fills_the_frame():
    shirt = Image.new("L", (600, 400), 245)
    shirt.paste(80, (250, 100, 370, 300))  # a dark garment, 120×200, off centre: 17×28 once framed
    array = preprocess_images([encode(shirt.convert("RGB"), "JPEG", quality=90)], OBJECT)[0, :, :, 0]
    rows, columns = np.nonzero(array > 0.3)
    assert rows.min() == 0 and rows.max() == 27  # longer side fills the 28 rows
    assert (
        16 <= columns.max() - columns.min() + 1 <= 18 and abs((columns.min() + columns.max()) / 2 - 13.5) <= 1
    )
    assert array[14, 14] > 0.6 and array[14, 2] == 0


def test_a_wide_photo_is_cropped_to_its_centre_square():
    photo = Image.new("RGB", (96, 32), (255, 0, 0))
    photo.paste((0, 0, 255), (32, 0, 64, 32))  # only the centre square is blue
    array = preprocess_images([encode(photo)], SQUARE)[0]
    assert array[..., 2].min() > 0.95 and array[..., 0].max() < 0.05


def test_model_input_png_is_the_exact_model_input():
    array = preprocess_images([encode(on_canvas(digit_stroke()), "JPEG")], DIGIT)[0]
    decoded = np.asarray(Image.open(io.BytesIO(model_input_png(array, DIGIT))), dtype=np.float32) / 255
    assert decoded.shape == (28, 28)
    np.testing.assert_array_equal(decoded, array[:, :, 0])
