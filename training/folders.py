"""Train on one's own images: a folder with one sub-folder per class (the layout of Keras'
`image_dataset_from_directory`) read into what `pipeline.train_and_export` trains on.

Classes are the sub-folders' names; input size, channels and the gateway's preprocessing mode are
chosen from the images (or given); every image goes through the gateway's own decoding and
reframing, so the model trains on uploads as they will be served. A seeded split per class holds
out the test images; `train` carves the validation images out of the rest, as for the built-ins.
"""

import dataclasses
import logging
import math
import statistics
import unicodedata
from pathlib import Path

import numpy as np

from serving.gateway.errors import InvalidImageError
from serving.gateway.preprocess import PreprocessingSpec, decode_image, reframe

from .datasets import DatasetSpec
from .export import MODE_EXAMPLES, preprocessing_spec
from .profiles import Augmentation, get_profile

PREPROCESSING_MODES = tuple(MODE_EXAMPLES)  # full_frame, centered_object, mnist_digit
TEST_FRACTION = 0.15  # of each class, at least one image
MIN_IMAGES_PER_CLASS = 4  # one to test on, the rest to train and validate on
# A chosen input size stays in it: at most CIFAR-10's 32 px, which two cores train in minutes (a 64-px
# input costs four times as much); --image-size gives larger inputs.
SIZE_RANGE = (16, 32)
IMAGE_SIZE_LIMIT = (8, 512)  # what --image-size accepts
ANALYSIS_SIZE = 32  # images are judged (colour? plain backdrop?) at this size
GREY_SPREAD = 4.0  # mean spread between an image's channels below which it is grey (JPEG adds a little)
# An image is on a plain backdrop where most of its border is one grey level: 70 % of the border pixels
# within 16 levels of their median holds for 99.6 % of Fashion-MNIST's images and 15 % of CIFAR-10's.
BACKDROP_LEVELS = 16.0
BACKDROP_BORDER_SHARE = 0.7
PLAIN_SHARE = 0.8  # share of plain-backdrop grey images above which the folder is of objects on a backdrop

logger = logging.getLogger(__name__)


class DataFolderError(ValueError):
    """A folder that cannot be trained on; the message says what to fix."""


@dataclasses.dataclass
class FolderData:
    """A folder read and split: its DatasetSpec, uint8 (images [N, H, W, C], labels [N]) for training
    and testing, and how it was made (for evaluation.json)."""

    spec: DatasetSpec
    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]
    summary: dict

    def profile(self, name):
        """The training profile `name` for this folder: a plain network gets the stages (each halving
        the map) that leave its last map at most 8x8, as its flattened head wants; mirror images and
        shifts but for digits, which a mirror image would turn into no digit; reflected borders only
        for photos."""
        settings = get_profile(name, "folder")
        side = max(self.spec.height, self.spec.width)
        if settings.architecture == "plain":
            missing = max(0, math.ceil(math.log2(side / 8)) - len(settings.filters))
            filters = settings.filters + settings.filters[-1:] * missing
            settings = dataclasses.replace(settings, filters=filters)
        if name == "tiny":
            return settings
        mode = self.spec.preprocessing
        augmentation = Augmentation(shift=max(2, side // 8), reflect=mode == "full_frame",
                                    flip=mode != "mnist_digit")
        return dataclasses.replace(settings, augmentation=augmentation,
                                   flip_test_time=settings.flip_test_time and mode != "mnist_digit")


def check_image_size(image_size, error):
    """Raise `error` (the caller's exception class) unless --image-size is unset or in IMAGE_SIZE_LIMIT."""
    if image_size is not None and not IMAGE_SIZE_LIMIT[0] <= image_size <= IMAGE_SIZE_LIMIT[1]:
        raise error(f"--image-size {image_size} is out of range; give {IMAGE_SIZE_LIMIT[0]} to "
                    f"{IMAGE_SIZE_LIMIT[1]} (pixels per side)")


def read_folder(folder, name, *, image_size=None, preprocessing=None, seed=1337):
    """Read `folder` for model `name`: answers FolderData; DataFolderError says what to fix."""
    folder = Path(folder)
    class_folders = _class_folders(folder)
    classes = tuple(path.name for path in class_folders)
    if preprocessing is not None and preprocessing not in PREPROCESSING_MODES:
        raise DataFolderError(f"preprocessing {preprocessing!r} is unknown; give one of "
                              f"{', '.join(PREPROCESSING_MODES)}")
    check_image_size(image_size, DataFolderError)
    files, labels, looks, skipped = _survey(class_folders)
    _check_counts(folder, classes, labels, skipped)
    choice = choose_input(looks, classes, image_size=image_size, preprocessing=preprocessing)
    spec = DatasetSpec(name=name, height=choice["size"], width=choice["size"], channels=choice["channels"],
                       classes=classes, light_on_dark=choice["preprocessing"] != "full_frame",
                       preprocessing=choice["preprocessing"])
    images = load_images(files, spec)
    labels = np.asarray(labels, np.int64)
    train_indices, test_indices = stratified_split(labels, TEST_FRACTION, seed)
    counts = {label: int(np.sum(labels == index)) for index, label in enumerate(classes)}
    summary = {
        "data": str(folder),
        "images_per_class": counts,
        "skipped_files": len(skipped),
        "input_choice": choice["reason"],
        "split": f"test: {TEST_FRACTION:.0%} of each class's images (at least one), chosen at random with "
                 f"seed {seed}; validation: a share of the rest, at random (the profile's)",
    }
    logger.info("%s: %d images in %d classes from %s; %s", name, len(labels), len(classes), folder,
                choice["reason"])
    logger.info("%s: %d images held out for the test set (stratified by class, seed %d)", name,
                len(test_indices), seed)
    return FolderData(spec, (images[train_indices], labels[train_indices]),
                      (images[test_indices], labels[test_indices]), summary)


def read_test_folder(folder, spec):
    """Every image of `folder` (sub-folders named as `spec`'s classes) as the gateway would serve it to a
    model of `spec`: (uint8 images, labels, summary), to evaluate an imported model on."""
    folder = Path(folder)
    class_folders = _class_folders(folder, min_classes=1)
    unknown = [path.name for path in class_folders if path.name not in spec.classes]
    if unknown:
        raise DataFolderError(f"class folders {', '.join(map(repr, unknown))} of {folder} are not among the "
                              f"labels ({', '.join(spec.classes)}); name each sub-folder after its label")
    files, found, _, skipped = _survey(class_folders)
    if not files:
        raise DataFolderError(f"{folder} holds no image we can read ({len(skipped)} files skipped)")
    labels = np.asarray([spec.classes.index(class_folders[label].name) for label in found], np.int64)
    counts = {label: int(np.sum(labels == index)) for index, label in enumerate(spec.classes)}
    summary = {"data": str(folder), "images_per_class": counts, "skipped_files": len(skipped)}
    return load_images(files, spec), labels, summary


def _class_folders(folder, min_classes=2):
    if not folder.is_dir():
        raise DataFolderError(f"data folder {folder} does not exist or is not a folder")
    try:
        folders = sorted(path for path in folder.iterdir() if path.is_dir())
    except OSError as error:  # e.g. no permission to list it
        raise DataFolderError(f"cannot read data folder {folder} ({error.strerror or error}); make it "
                              "readable") from None
    class_folders = [path for path in folders if not path.name.startswith(".")]
    hidden = [path.name for path in folders if path.name.startswith(".")]
    if hidden:  # a class the model would silently lack, or a .git: say which
        logger.warning("%s: ignored hidden folder(s) %s; a class folder's name must not start with '.'",
                       folder, ", ".join(map(repr, hidden)))
    if not class_folders:
        raise DataFolderError(f"{folder} has no sub-folders: put each class's images in a sub-folder named "
                              f"after the class (e.g. {folder / 'cats' / '1.jpg'})")
    if len(class_folders) < min_classes:
        raise DataFolderError(f"{folder} has one class only ({class_folders[0].name!r}): a classifier needs "
                              "at least two sub-folders, one per class")
    for path in class_folders:
        # labels.txt holds a label a line, and the gateway trims each line.
        if path.name != path.name.strip() or "\n" in path.name or "\r" in path.name:
            raise DataFolderError(f"class folder {path.name!r} starts or ends with a space or holds a line "
                                  "break, which labels.txt cannot keep; rename it")
        try:
            path.name.encode("utf-8")
        except UnicodeEncodeError:
            raise DataFolderError(f"class folder {path.name!r} is not valid UTF-8; rename it") from None
    # "café" typed on macOS (NFD) and elsewhere (NFC) are two folders but one label to a reader.
    by_form = {}
    for path in class_folders:
        by_form.setdefault(unicodedata.normalize("NFC", path.name), []).append(path.name)
    alike = [names for names in by_form.values() if len(names) > 1]
    if alike:
        raise DataFolderError(f"class folders {' and '.join(map(repr, alike[0]))} are the same name written "
                              "with other Unicode characters (composed and decomposed accents); merge them")
    return class_folders


def _survey(class_folders):
    """Decode every file once: (paths, labels, per image its size and looks, {path: why skipped})."""
    files, labels, looks, skipped = [], [], [], {}
    analysis = PreprocessingSpec(ANALYSIS_SIZE, ANALYSIS_SIZE, 3)  # "resize": the whole frame, RGB
    for label, class_folder in enumerate(class_folders):
        for path in sorted(class_folder.rglob("*")):
            hidden = any(part.startswith(".") for part in path.relative_to(class_folder).parts)
            if hidden or path.is_dir():
                continue
            if not path.is_file():  # a link to nothing, a socket, ...: counted with the files not read
                skipped[str(path)] = "not a regular file (a broken link?)"
                continue
            try:
                image = decode_image(path.read_bytes())
                thumbnail = np.asarray(reframe(image, analysis)[0], np.float32)
            except (InvalidImageError, OSError) as error:
                skipped[str(path)] = getattr(error, "message", str(error))
                continue
            files.append(path)
            labels.append(label)
            looks.append(_looks(image.size, thumbnail))
    if skipped:
        examples = "; ".join(f"{path}: {why}" for path, why in list(skipped.items())[:3])
        logger.warning("skipped %d files that are no images we can read (%s%s)", len(skipped), examples,
                       "; ..." if len(skipped) > 3 else "")
    return files, labels, looks, skipped


def _looks(size, thumbnail):
    grey = float(np.mean(thumbnail.max(axis=2) - thumbnail.min(axis=2))) < GREY_SPREAD
    luminance = thumbnail @ np.array([0.299, 0.587, 0.114], np.float32)
    border = np.concatenate([luminance[0], luminance[-1], luminance[1:-1, 0], luminance[1:-1, -1]])
    plain = float(np.mean(np.abs(border - np.median(border)) <= BACKDROP_LEVELS)) >= BACKDROP_BORDER_SHARE
    return {"shorter_side": min(size), "grey": grey, "plain_backdrop": plain}


def _check_counts(folder, classes, labels, skipped):
    if not labels:
        what = f"{len(skipped)} files, none of them an image we can read" if skipped else "no files"
        raise DataFolderError(f"{folder} holds {what}: put PNG, JPEG, GIF, BMP, WebP or TIFF images in its "
                              "class sub-folders")
    counts = np.bincount(labels, minlength=len(classes))
    for label, count in zip(classes, counts, strict=True):
        if count < MIN_IMAGES_PER_CLASS:
            raise DataFolderError(
                f"class {label!r} has {count} image{'s' if count != 1 else ''}; each class needs at least "
                f"{MIN_IMAGES_PER_CLASS} (one for the test split, the rest to train and validate on): add "
                f"images to {folder / label} or remove that folder")


def choose_input(looks, classes, *, image_size=None, preprocessing=None):
    """{size, channels, preprocessing, reason} for images that look like `looks` (see _looks)."""
    median_side = statistics.median(look["shorter_side"] for look in looks)
    if image_size is None:
        size = int(min(max(4 * round(median_side / 4), SIZE_RANGE[0]), SIZE_RANGE[1]))
        low, high = SIZE_RANGE
        size_reason = f"input {size}x{size} (median shorter side {median_side:g} px, kept to {low}-{high})"
    else:
        size, size_reason = image_size, f"input {image_size}x{image_size} (--image-size)"
    colour = sum(not look["grey"] for look in looks)
    channels = 3 if colour else 1
    channel_reason = (f"colour ({colour} of {len(looks)} images have colour)" if colour
                      else "grey (no image has colour)")
    plain = sum(look["plain_backdrop"] for look in looks) / len(looks)
    if preprocessing is not None:
        mode_reason = "--preprocessing"
    elif channels == 1 and plain >= PLAIN_SHARE:
        digits = all(len(label) == 1 and label.isdigit() for label in classes)
        preprocessing = "mnist_digit" if digits else "centered_object"
        mode_reason = f"grey, {plain:.0%} on a plain backdrop" + (", classes are digits" if digits else "")
    else:
        preprocessing = "full_frame"
        mode_reason = "photos: colour" if colour else f"grey, only {plain:.0%} on a plain backdrop"
    reason = f"{size_reason}, {channel_reason}, preprocessing {preprocessing} ({mode_reason})"
    return {"size": size, "channels": channels, "preprocessing": preprocessing, "reason": reason}


def load_images(files, spec):
    """uint8 [N, H, W, C]: each file as the gateway would reframe it for a model of `spec`."""
    served = PreprocessingSpec.from_mapping(preprocessing_spec(spec))
    images = np.empty((len(files), spec.height, spec.width, spec.channels), np.uint8)
    for index, path in enumerate(files):
        framed = reframe(decode_image(path.read_bytes()), served)[0]
        if framed.size != (spec.width, spec.height):  # passed through as it was (already framed)
            framed = framed.resize((spec.width, spec.height))
        pixels = np.asarray(framed.convert("L" if spec.channels == 1 else "RGB"))
        images[index] = pixels.reshape(spec.height, spec.width, spec.channels)
    return images


def stratified_split(labels, fraction, seed):
    """(training indices, test indices): per class, `fraction` of its images (at least one) at random for
    the test set."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        held_out = max(1, round(len(members) * fraction))
        test.extend(members[:held_out])
        train.extend(members[held_out:])
    # Training images in a seeded random order, not class by class: --limit then keeps every class.
    return rng.permutation(np.asarray(train)), np.sort(np.asarray(test))
