"""Tiny SavedModels in the exported layout, for tests of anything that talks to a model server.

`export_test_model(base_path / "1")` writes a few-layer Keras classifier with signature
`serving_default`: `images` float32 [None, 28, 28, 1] -> `probabilities` float32 [None, 10].
It exports through keras.export.ExportArchive, which TF Serving (and this server) can run.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from serving.protos.tensorflow_serving.apis import predict_pb2, prediction_log_pb2


def export_test_model(
    export_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    input_shape: tuple[int, int, int] = (28, 28, 1),
    classes: int = 10,
) -> str:
    """Write a randomly initialised classifier as a SavedModel at `export_dir`; return the path."""
    import keras  # imported here: only callers that build models pay for it

    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input(input_shape),
            keras.layers.Conv2D(4, 3, activation="relu"),
            keras.layers.Flatten(),
            keras.layers.Dense(classes, activation="softmax"),
        ]
    )
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint(
        name="serving_default",
        fn=lambda images: {"probabilities": model(images, training=False)},
        input_signature=[tf.TensorSpec([None, *input_shape], tf.float32, name="images")],
    )
    archive.write_out(os.fspath(export_dir), verbose=False)
    return os.fspath(export_dir)


def write_warmup_requests(
    export_dir: str | os.PathLike[str],
    requests: Sequence[predict_pb2.PredictRequest | prediction_log_pb2.PredictionLog],
) -> str:
    """Write `assets.extra/tf_serving_warmup_requests` (TFRecord of PredictionLog) for a version.

    PredictRequests become predict logs; PredictionLogs (classify, regress...) go as they are.
    """
    directory = os.path.join(os.fspath(export_dir), "assets.extra")
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "tf_serving_warmup_requests")
    with tf.io.TFRecordWriter(path) as writer:
        for request in requests:
            if request.DESCRIPTOR.full_name == prediction_log_pb2.PredictionLog.DESCRIPTOR.full_name:
                log = request
            else:
                log = prediction_log_pb2.PredictionLog()
                log.predict_log.request.CopyFrom(request)
            writer.write(log.SerializeToString())
    return path


def random_images(count: int, shape: tuple[int, int, int] = (28, 28, 1), seed: int = 0) -> np.ndarray:
    """`count` float32 images with values in [0, 1], as the gateway sends them."""
    return np.random.default_rng(seed).random((count, *shape), dtype=np.float32)
