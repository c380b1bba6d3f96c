"""The three data sets: what each one is (shape, classes) and how to read its standard files.

Local files are read directly; keras.datasets is only a fallback, because it hash-checks
files already in its cache and deletes the ones that differ from the official downloads.
"""

import gzip
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    height: int
    width: int
    channels: int
    classes: tuple[str, ...]
    light_on_dark: bool  # MNIST-style white strokes on black; the gateway may need to invert photos
    files: str = ""  # what to put in DATA_DIR, for the error message
    # The gateway's preprocessing mode for a folder of one's own images (training/folders.py); the
    # built-in data sets have theirs in export.UPLOAD_PREPROCESSING.
    preprocessing: str | None = None


DATASETS = {
    "mnist": DatasetSpec(
        name="mnist",
        height=28,
        width=28,
        channels=1,
        classes=tuple("0123456789"),
        light_on_dark=True,
        files="mnist.npz",
    ),
    "fashion_mnist": DatasetSpec(
        name="fashion_mnist",
        height=28,
        width=28,
        channels=1,
        classes=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                 "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
        light_on_dark=True,
        files="fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz",
    ),
    "cifar10": DatasetSpec(
        name="cifar10",
        height=32,
        width=32,
        channels=3,
        classes=("airplane", "automobile", "bird", "cat", "deer",
                 "dog", "frog", "horse", "ship", "truck"),
        light_on_dark=False,
        files="cifar10.npz (or the official cifar-10-batches-py/ folder)",
    ),
}


class DatasetNotFoundError(ValueError):
    """Neither a local file nor keras.datasets could provide the data set."""


class ModelNameError(ValueError):
    """A name for a model of one's own that the gateway would not serve, or a built-in model's."""


def check_model_name(name):
    """Raise ModelNameError unless `name` can be a new model's: the gateway's pattern, no built-in name."""
    from serving.model_config import MODEL_NAME_PATTERN

    if name in DATASETS or name == "all":
        raise ModelNameError(f"model name {name!r} collides with a built-in model ({', '.join(DATASETS)}); "
                             "choose another name for a model of your own")
    if not MODEL_NAME_PATTERN.fullmatch(name):
        raise ModelNameError(f"model name {name!r} is not valid: use 1 to 128 ASCII letters, digits, "
                             "'_', '.' or '-', starting with a letter or digit (e.g. my_flowers)")


def get_spec(name):
    """The spec of built-in data set `name`; a DatasetSpec (a folder's, see training/folders.py) as it is."""
    if isinstance(name, DatasetSpec):
        return name
    if name not in DATASETS:
        raise ValueError(f"unknown data set {name!r}; expected one of {', '.join(DATASETS)}")
    return DATASETS[name]


# Where the project's data sets sit beside a checkout (../shared/datasets), the default when it exists.
SHARED_DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"


def resolve_data_dir(data_dir=None):
    """`data_dir`, else $DATA_DIR, else ../shared/datasets beside the checkout if it exists, else Keras'
    cache."""
    if data_dir or os.environ.get("DATA_DIR"):
        return Path(data_dir or os.environ["DATA_DIR"])
    return SHARED_DATA_DIR if SHARED_DATA_DIR.is_dir() else Path.home() / ".keras" / "datasets"


def load_data(name, data_dir=None):
    """Return ((x_train, y_train), (x_test, y_test)): uint8 [N, H, W, C], int64 [N]."""
    spec = get_spec(name)
    folder = resolve_data_dir(data_dir)
    try:
        splits = _read_local(spec.name, folder)
    except (OSError, ValueError, EOFError, KeyError, pickle.UnpicklingError, zipfile.BadZipFile) as error:
        # A truncated download, a Git LFS pointer, a wrong file under the right name.
        raise DatasetNotFoundError(
            f"data set {name!r}: the file in {folder} cannot be read ({type(error).__name__}: {error}). "
            f"Put {spec.files} there, as the official releases ship them, or set DATA_DIR to the folder "
            "that holds them."
        ) from error
    if splits is None:
        splits = _download_with_keras(spec, folder)
    (x_train, y_train), (x_test, y_test) = splits
    shape = (spec.height, spec.width, spec.channels)
    return (
        (x_train.reshape(-1, *shape), y_train.reshape(-1).astype(np.int64)),
        (x_test.reshape(-1, *shape), y_test.reshape(-1).astype(np.int64)),
    )


def load_exact_test_mask(name, data_dir=None):
    """Which test images have exact pixels, or None where all do (see datasets/README.md)."""
    path = resolve_data_dir(data_dir) / "cifar10.npz"
    if name != "cifar10" or not path.exists():
        return None
    with np.load(path) as arrays:
        return arrays["exact_test"] if "exact_test" in arrays.files else None


def _read_local(name, folder):
    fashion = {
        (split, kind): folder / "fashion-mnist" / f"{split}-{kind}-ubyte.gz"
        for split in ("train", "t10k") for kind in ("images-idx3", "labels-idx1")
    }
    if name == "mnist" and (folder / "mnist.npz").exists():
        return _read_npz(folder / "mnist.npz")
    if name == "fashion_mnist" and all(path.exists() for path in fashion.values()):
        return tuple(
            (_read_idx(fashion[split, "images-idx3"]), _read_idx(fashion[split, "labels-idx1"]))
            for split in ("train", "t10k")
        )
    if name == "cifar10" and (folder / "cifar10.npz").exists():
        return _read_npz(folder / "cifar10.npz")
    if name == "cifar10" and (folder / "cifar-10-batches-py" / "test_batch").exists():
        return _read_cifar_batches(folder / "cifar-10-batches-py")
    return None


def _read_npz(path):
    # The file opened here, not by np.load: a file that is no zip would leave its handle open.
    with open(path, "rb") as file, np.load(file) as arrays:
        return (arrays["x_train"], arrays["y_train"]), (arrays["x_test"], arrays["y_test"])


def _read_idx(path):
    # IDX: two zero bytes, a dtype byte (0x08 = uint8), the rank, big-endian uint32 dimensions.
    with gzip.open(path, "rb") as file:
        data = file.read()
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise ValueError(f"{path} is not a uint8 IDX file")
    rank = data[3]
    shape = tuple(int(size) for size in np.frombuffer(data, ">u4", count=rank, offset=4))
    return np.frombuffer(data, np.uint8, offset=4 + 4 * rank).reshape(shape)


def _read_cifar_batches(folder):
    def read_batch(filename):
        with open(folder / filename, "rb") as file:
            batch = pickle.load(file, encoding="bytes")
        # Rows are 3072 bytes: the red, green and blue 32x32 planes in turn.
        images = batch[b"data"].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        return images, np.array(batch[b"labels"])

    train = [read_batch(f"data_batch_{index}") for index in range(1, 6)]
    x_train = np.concatenate([images for images, _ in train])
    y_train = np.concatenate([labels for _, labels in train])
    return (x_train, y_train), read_batch("test_batch")


def _download_with_keras(spec, folder):
    try:
        import keras

        return getattr(keras.datasets, spec.name).load_data()
    except Exception as error:
        raise DatasetNotFoundError(
            f"data set {spec.name!r} not found in {folder} and downloading it with keras.datasets "
            f"failed ({type(error).__name__}: {error}). Put {spec.files} in {folder}, "
            "or set DATA_DIR to the folder that holds them (e.g. DATA_DIR=../shared/datasets)."
        ) from error
