"""Every image mode and format the real gateway reads gives the answer its plain PNG twin gives;
transparency is composited onto white.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from tests.gateway_hostile_helpers import predict, raw
from tests.hostile_images import encode, exif_rotated, gif_two_frames, save


# Every mode and format the gateway reads must give the answer its plain PNG twin gives.
def _digit_variants(digit: np.ndarray) -> dict[str, bytes]:
    rgb = np.dstack([digit] * 3)
    opaque = np.dstack([digit, np.full_like(digit, 255)])
    return {
        "JPEG quality 100": encode(digit, "JPEG", quality=100),
        "GIF": encode(digit, "GIF"),
        "BMP": encode(digit, "BMP"),
        "WebP lossless": encode(digit, "WEBP", lossless=True),
        "TIFF": encode(digit, "TIFF"),
        "RGB PNG": encode(rgb),
        "CMYK TIFF": encode(rgb, "TIFF", mode="CMYK"),
        "CMYK JPEG": encode(rgb, "JPEG", mode="CMYK", quality=100),
        "16-bit PNG": save(Image.fromarray(digit.astype(np.uint16) * 257), "PNG"),
        "32-bit float TIFF": save(Image.fromarray(digit.astype(np.float32)), "TIFF"),
        "palette PNG": save(Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "opaque grayscale+alpha PNG": encode(opaque),
        "opaque RGBA PNG": encode(np.dstack([rgb, np.full_like(digit, 255)])),
        "EXIF-rotated PNG": exif_rotated(digit, "PNG"),
        "EXIF-rotated JPEG": exif_rotated(digit, "JPEG"),
        "animated GIF (first frame)": gif_two_frames(digit, 255 - digit),
    }


LOSSY = {"JPEG quality 100", "CMYK JPEG", "EXIF-rotated JPEG"}


def test_every_mode_and_format_gives_the_answer_of_its_png_twin(gateway_url, test_images):
    digits = test_images["mnist"][0][:4, :, :, 0]
    for digit in digits:
        expected = predict(gateway_url, **raw(encode(digit))).json()["predictions"][0]
        for what, payload in _digit_variants(digit).items():
            response = predict(gateway_url, **raw(payload, "application/octet-stream"))
            assert response.status_code == 200, (what, response.text)
            answer = response.json()["predictions"][0]
            if what in LOSSY:
                assert answer["class_index"] == expected["class_index"], what
                assert answer["probability"] == pytest.approx(expected["probability"], abs=0.05), what
            else:
                assert answer == expected, what


def test_transparency_is_composited_onto_white(gateway_url):
    colors = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    transparent = encode(np.dstack([colors, np.zeros((32, 32), np.uint8)]))  # any colour, alpha 0
    white = encode(np.full((32, 32, 3), 255, np.uint8))
    answers = [predict(gateway_url, "cifar10", "?top_k=10", **raw(p)).json() for p in (transparent, white)]
    assert answers[0]["predictions"] == answers[1]["predictions"]
