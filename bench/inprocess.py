"""The in-process limit: the exported signature called directly, no server, no network.

`python -m bench.inprocess --models-dir DIR --data-dir DIR --model mnist --seconds 3` prints one
JSON line per batch size with images per second; a separate process, so the benchmark's own process
never loads TensorFlow. (What the out-of-distribution score costs a call: bench/score_cost.py.)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

BATCH_SIZES = (1, 32)


def images_per_second(signature, images: np.ndarray, seconds: float) -> float:
    import tensorflow as tf

    batch = tf.constant(images)
    for _ in range(5):  # first calls set up the function's kernels
        signature(images=batch)
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        signature(images=batch)["probabilities"].numpy()
        calls += 1
    return calls * len(images) / elapsed


def latest_version(models_dir: Path, model: str) -> Path:
    versions = [path for path in (models_dir / model).iterdir() if path.name.isdigit()]
    return max(versions, key=lambda path: int(path.name))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models-dir", type=Path, required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--model", required=True)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    import tensorflow as tf

    from bench.workload import load_workload

    workload = load_workload(args.model, args.data_dir, args.models_dir)
    signature = tf.saved_model.load(str(latest_version(args.models_dir, args.model))).signatures[
        "serving_default"
    ]
    images = workload.floats()
    for batch_size in BATCH_SIZES:
        batch = np.resize(images, (batch_size, *images.shape[1:]))
        # The best of three rounds: a limit is what the model can do, not what a busy machine let it.
        rate = max(images_per_second(signature, batch, args.seconds / 3) for _ in range(3))
        print(
            json.dumps({"model": args.model, "batch_size": batch_size, "images_per_second": rate}), flush=True
        )


if __name__ == "__main__":
    main()
