"""`python -m bench.reframe_micro --data-dir DIR`: the gateway's preprocessing cost per image, in-process.

Real test-set PNGs and generated realistic uploads through `preprocess_images_explained`, one image per
call as a single-image request makes it, with each data set's exported spec; prints µs per image.
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Callable
from functools import partial
from pathlib import Path

from bench.workload import encode_png
from serving.gateway.preprocess import (
    PreprocessingSpec,
    decode_image,
    preprocess_images_explained,
    reframe,
)
from training.datasets import load_data

DEFAULT_DATA_DIR = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"
# Each data set's input and the mode its export names (training/export.py, which imports TensorFlow; the
# modes' defaults are the flags it writes out).
SPECS = {
    "mnist": PreprocessingSpec(height=28, width=28, channels=1, mode="mnist_digit"),
    "fashion_mnist": PreprocessingSpec(height=28, width=28, channels=1, mode="centered_object"),
    "cifar10": PreprocessingSpec(height=32, width=32, channels=3, mode="full_frame"),
}


def preprocess_one(data: bytes, spec: PreprocessingSpec) -> object:
    """What one single-image request costs the gateway: decode, reframe, scale into a batch of one."""
    return preprocess_images_explained([data], spec)


def microseconds_per_image(process: Callable[[object], object], items: list, repeat: int) -> float:
    """The best of `repeat` passes over all items: the least disturbed by other processes on the machine."""
    timer = timeit.Timer(lambda: [process(item) for item in items])
    return min(timer.repeat(repeat=repeat, number=1)) / len(items) * 1e6


def workloads(data_dir: str, count: int, uploads: int) -> list[tuple[str, str, list[bytes]]]:
    """(what, model, encoded images): each data set's own test PNGs, and realistic digit uploads."""
    from tests.realistic_uploads import generate_uploads

    loaded = {name: load_data(name, data_dir)[1] for name in SPECS}
    found = [
        (f"{name} test PNGs", name, [encode_png(image) for image in loaded[name][0][:count]])
        for name in SPECS
    ]
    images, labels = loaded["mnist"]
    generated = generate_uploads(uploads, images[:200].reshape(-1, 28, 28), labels[:200], seed=3)
    found.append(("realistic uploads", "mnist", [upload.data for upload in generated]))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data-dir", default=str(DEFAULT_DATA_DIR))
    parser.add_argument("--count", type=int, default=1000, help="test-set images per data set")
    parser.add_argument("--uploads", type=int, default=60, help="generated realistic uploads")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(f"{'images':<24}{'spec':<18}{'preprocess µs/image':>22}{'reframe µs/image':>20}")
    for what, model, encoded in workloads(args.data_dir, args.count, args.uploads):
        spec = SPECS[model]
        whole = microseconds_per_image(partial(preprocess_one, spec=spec), encoded, args.repeat)
        decoded = [decode_image(data) for data in encoded]
        # reframe() may convert its input but never changes it, so the decoded images are reused.
        alone = microseconds_per_image(partial(reframe, spec=spec), decoded, args.repeat)
        print(f"{what:<24}{spec.mode:<18}{whole:>22.1f}{alone:>20.1f}")


if __name__ == "__main__":
    main()
