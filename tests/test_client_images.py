"""PIL images passed to the SDK reach the gateway as their file would: upright (EXIF Orientation
applied) and in any mode Pillow opens, every pixel as it is."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image, ImageOps
from pixelgate import Client
from pixelgate._images import encode_image

ORIENTATION = 0x0112


def camera_jpeg(pixels: np.ndarray, orientation: int) -> bytes:
    """A JPEG whose pixels are stored sideways, with the EXIF tag that says how to turn them."""
    exif = Image.Exif()
    exif[ORIENTATION] = orientation
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


def sent(image: Image.Image) -> Image.Image:
    name, data, kind = encode_image(image)
    decoded = Image.open(io.BytesIO(data))
    assert kind == Image.MIME[decoded.format], (name, kind)
    return decoded


@pytest.mark.parametrize("orientation", [3, 6, 8])
def test_a_pil_image_from_a_camera_jpeg_is_sent_upright(orientation):
    pixels = np.random.default_rng(orientation).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    opened = Image.open(io.BytesIO(camera_jpeg(pixels, orientation)))
    upright = ImageOps.exif_transpose(opened)
    assert upright.size != opened.size or orientation == 3
    decoded = sent(opened)
    assert decoded.size == upright.size
    assert np.array_equal(np.asarray(decoded), np.asarray(upright))


def test_the_sdk_and_the_file_give_the_same_answer_for_a_sideways_photo(gateway_url, test_images, tmp_path):
    digit = test_images["mnist"][0][0].squeeze(-1)
    stored = np.ascontiguousarray(np.rot90(digit, 1))  # what orientation 6 (turn 90° clockwise) undoes
    path = tmp_path / "photo.jpg"
    path.write_bytes(camera_jpeg(np.stack([stored] * 3, axis=-1), 6))
    with Client(gateway_url) as client:
        by_file = client.predict(path, model="mnist").predictions[0]
        by_pil = client.predict(Image.open(path), model="mnist").predictions[0]
    assert by_file.label == str(test_images["mnist"][1][0])
    assert (by_pil.label, round(by_pil.probability, 3)) == (by_file.label, round(by_file.probability, 3))


# Modes PNG cannot hold go as TIFF, which keeps them; the gateway converts them as from a file.
@pytest.mark.parametrize("mode", ["CMYK", "YCbCr", "LAB", "F", "I", "I;16L", "PA"])
def test_modes_png_cannot_hold_are_sent_losslessly(mode):
    size = len(Image.new(mode, (7, 5)).tobytes())
    raw = np.random.default_rng(0).integers(0, 256, size, dtype=np.uint8).tobytes()
    image = Image.frombytes(mode, (7, 5), raw)
    if mode == "F":  # random bytes would be NaNs and infinities
        image = Image.fromarray(np.random.default_rng(0).uniform(0, 255, (5, 7)).astype(np.float32), mode="F")
    decoded = sent(image)
    assert decoded.size == image.size
    assert np.array_equal(np.asarray(decoded), np.asarray(image))  # the same values (I;16L comes back I;16)


def test_32_bit_grayscale_keeps_values_beyond_16_bits():
    values = np.array([[-5, 70000, 100, 2**31 - 1, 0]], dtype=np.int32)
    assert np.array_equal(np.asarray(sent(Image.fromarray(values, mode="I"))), values)


def test_a_large_cmyk_photo_is_sent_compressed():
    """6 MP of CMYK is 23 MiB uncompressed, over the gateway's 20 MiB request limit; as a file
    (JPEG) it would pass, so as a PIL image it must too."""
    y, x = np.mgrid[0:2000, 0:3000]
    channels = [x * 255 // 3000, y * 255 // 2000, (x + y) * 255 // 5000, np.full_like(x, 30)]
    image = Image.fromarray(np.stack(channels, axis=-1).astype(np.uint8), mode="CMYK")
    name, data, kind = encode_image(image)
    assert kind == "image/tiff" and len(data) < 4 * 2**20, len(data)
    assert np.array_equal(np.asarray(Image.open(io.BytesIO(data))), np.asarray(image))


@pytest.mark.parametrize(("mode", "shown_as"), [("HSV", "RGB"), ("La", "LA"), ("RGBa", "RGBA")])
def test_modes_no_lossless_format_holds_are_sent_as_the_colours_they_show(mode, shown_as):
    image = Image.new(mode, (6, 4), (90, 120, 200, 255)[: len(mode) if mode != "HSV" else 3])
    decoded = sent(image)
    assert decoded.mode == shown_as
    assert np.array_equal(np.asarray(decoded), np.asarray(image.convert(shown_as)))


def test_a_cmyk_image_gets_the_answer_its_tiff_file_gets(gateway_url):
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (32, 32, 4), dtype=np.uint8), mode="CMYK")
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF")
    with Client(gateway_url) as client:
        by_pil = client.predict(image, model="cifar10").predictions[0]
        by_file = client.predict(buffer.getvalue(), model="cifar10").predictions[0]
    assert (by_pil.label, round(by_pil.probability, 4)) == (by_file.label, round(by_file.probability, 4))
