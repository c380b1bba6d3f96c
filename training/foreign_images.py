"""Images unlike a model's training data, to measure its out-of-distribution score: the other
data sets, noise, solid frames, rendered glyphs, patterns, blurred and inverted images.

`foreign_image_sets(name, count, seed)` answers {kind: uint8 [count, H, W, C]} at the model's
size; `as_served(images, preprocessing)` runs any such images through the gateway's own
preprocessing (PNG bytes in, the model's input out), which is what the served model sees.
"""

import functools
import io
import logging

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from .datasets import DATASETS, DatasetNotFoundError, get_spec, load_data

# Letters and symbols that no digit model should take for a digit (no O, I, l, S, Z, B, g, q, ...).
GLYPHS = "ACEFHKMNPRTUVWXYacdefhkmnprtuvwxy#%&@*+=?!$<>{}~^"

logger = logging.getLogger(__name__)


def foreign_image_sets(name, count=1000, seed=0, data_dir=None, own_images=None):
    """{kind: uint8 [count, H, W, C]} of images foreign to data set `name`, at its size and channels.

    Deterministic for a given seed; the other data sets come from their test splits. `own_images`: the
    test images of a folder of one's own (`name` its DatasetSpec), for which the built-in data sets are
    foreign where they can be read, and skipped where not.
    """
    spec = get_spec(name)
    rng = np.random.default_rng(seed)
    shape = (count, spec.height, spec.width, spec.channels)
    sets = {}
    for other in DATASETS:
        if other != spec.name:
            try:
                _, (images, _) = load_data(other, data_dir)
            except DatasetNotFoundError:
                if own_images is None:
                    raise
                logger.info("%s: no %s images to measure the out-of-distribution score on", spec.name, other)
                continue
            chosen = images[np.sort(rng.choice(len(images), count, replace=False))]
            sets[other] = np.stack([_convert(image, spec) for image in chosen])
    sets["uniform_noise"] = rng.integers(0, 256, shape, dtype=np.uint8)
    sets["gaussian_noise"] = _gaussian_noise(rng, shape)
    sets["solid"] = _solid(rng, shape, jitter=0)
    sets["near_solid"] = _solid(rng, shape, jitter=6)
    sets["glyphs"] = np.stack([_glyph(rng, spec) for _ in range(count)])
    sets["patterns"] = np.stack([_pattern(rng, spec) for _ in range(count)])
    own = own_images if own_images is not None else load_data(name, data_dir)[1][0]
    # A folder's test split may hold fewer images than `count`: then some repeat.
    chosen = own[np.sort(rng.choice(len(own), count, replace=len(own) < count))]
    # Blurred past recognition (a Gaussian of a sixth of the frame): shapeless blobs.
    radius = spec.height / 6
    sets["blurred"] = np.stack([_blur(image, radius) for image in chosen])
    if not spec.light_on_dark:
        # The gateway re-inverts light-on-dark data sets' negatives: only photos have a foreign negative.
        sets[f"inverted_{spec.name}"] = 255 - chosen
    return sets


def as_served(images, preprocessing):
    """uint8 [N, H, W, C] images as the gateway feeds them to the model: each encoded as PNG, then
    decoded and reframed by serving/gateway/preprocess.py with the version's preprocessing.json
    (a mapping). Answers float32 [N, H, W, C] in [0, 1]."""
    from serving.gateway.preprocess import PreprocessingSpec, preprocess_images

    spec = PreprocessingSpec.from_mapping(preprocessing)
    return preprocess_images([encode_png(image) for image in images], spec)


def encode_png(image):
    buffer = io.BytesIO()
    _to_pil(image).save(buffer, format="PNG")
    return buffer.getvalue()


def _to_pil(image):
    return Image.fromarray(image[:, :, 0] if image.shape[-1] == 1 else image)


def _from_pil(image, spec):
    array = np.asarray(image.convert("L" if spec.channels == 1 else "RGB"))
    return array[:, :, np.newaxis] if array.ndim == 2 else array


def _convert(image, spec):
    """Another data set's image at this one's size and channels (grey to RGB, RGB to luminance)."""
    resized = _to_pil(image).resize((spec.width, spec.height), Image.Resampling.LANCZOS)
    return _from_pil(resized, spec)


def _gaussian_noise(rng, shape):
    """Noise around a random grey level per image, with a random spread."""
    mean = rng.uniform(40, 215, (shape[0], 1, 1, 1))
    spread = rng.uniform(20, 80, (shape[0], 1, 1, 1))
    return np.clip(rng.normal(mean, spread, shape), 0, 255).astype(np.uint8)


def _solid(rng, shape, jitter):
    """One colour per frame, anywhere from black to white; `jitter` adds that much noise (± levels)."""
    count, _, _, channels = shape
    level = rng.integers(0, 256, (count, 1, 1, channels)).astype(np.int16)
    noise = rng.integers(-jitter, jitter + 1, shape) if jitter else np.zeros(shape, np.int16)
    return np.clip(level + noise, 0, 255).astype(np.uint8)


def _glyph(rng, spec):
    """A letter or symbol of Pillow's built-in font at a random size, angle, weight and position,
    dark on light or light on dark (as a scan or a screenshot would have it)."""
    size = 4 * spec.height  # drawn large, then reduced: antialiased like a photo of a glyph
    mode = "L" if spec.channels == 1 else "RGB"
    background, ink = _two_colours(rng, spec.channels)
    canvas = Image.new(mode, (size, size), background)
    font = _font(int(rng.integers(size // 2, size * 9 // 10)))
    character = GLYPHS[int(rng.integers(len(GLYPHS)))]
    draw = ImageDraw.Draw(canvas)
    left, top, right, bottom = draw.textbbox((0, 0), character, font=font)
    x = (size - (right - left)) / 2 - left + rng.uniform(-0.1, 0.1) * size
    y = (size - (bottom - top)) / 2 - top + rng.uniform(-0.1, 0.1) * size
    stroke = int(rng.integers(0, size // 24 + 1))
    draw.text((x, y), character, fill=ink, font=font, stroke_width=stroke, stroke_fill=ink)
    angle = float(rng.uniform(-20, 20))
    canvas = canvas.rotate(angle, resample=Image.Resampling.BICUBIC, fillcolor=background)
    return _from_pil(canvas.resize((spec.width, spec.height), Image.Resampling.LANCZOS), spec)


@functools.lru_cache(maxsize=128)
def _font(size):
    return ImageFont.load_default(size=size)


def _two_colours(rng, channels):
    if channels == 1:
        light, dark = int(rng.integers(180, 256)), int(rng.integers(0, 70))
    else:
        light = tuple(int(value) for value in rng.integers(150, 256, 3))
        dark = tuple(int(value) for value in rng.integers(0, 100, 3))
    return (light, dark) if rng.random() < 0.5 else (dark, light)


def _pattern(rng, spec):
    """A checkerboard or stripes at a random period, angle and pair of colours."""
    rows, columns = np.mgrid[0:spec.height, 0:spec.width].astype(np.float32)
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(2.5, spec.height / 2)
    along = (columns * np.cos(angle) + rows * np.sin(angle)) / period
    if rng.random() < 0.5:
        across = (-columns * np.sin(angle) + rows * np.cos(angle)) / period
        mask = (np.floor(along) + np.floor(across)) % 2 == 0
    else:
        mask = np.floor(along) % 2 == 0
    background, ink = (np.array(colour, np.uint8).reshape(-1) for colour in _two_colours(rng, spec.channels))
    return np.where(mask[:, :, np.newaxis], ink, background).astype(np.uint8)


def _blur(image, radius):
    pil = _to_pil(image).filter(ImageFilter.GaussianBlur(radius))
    array = np.asarray(pil)
    return array[:, :, np.newaxis] if array.ndim == 2 else array
