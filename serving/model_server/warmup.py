"""Model warmup: replay `assets.extra/tf_serving_warmup_requests` before a version serves.

The file is a TFRecord of PredictionLog protos, as TF Serving reads it
(servables/tensorflow/saved_model_warmup_util.cc): at most 1000 records, each run
`iterations` times; any failure fails the load. The loading thread runs the replay on
an event loop of its own, so a version warms up before any server loop exists.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time

import tensorflow as tf

from serving.model_server.bundle import SavedModelBundle
from serving.model_server.errors import DataLoss, InvalidArgument, Unimplemented
from serving.model_server.inference import run_classify, run_regress
from serving.model_server.multi_inference import run_multi_inference
from serving.model_server.predict import run_predict
from serving.model_server.tensor_encoding import decode_tensor
from serving.protos.tensorflow_serving.apis import prediction_log_pb2

logger = logging.getLogger(__name__)

WARMUP_FILENAME = "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000


def warmup_path(export_dir: str) -> str:
    return os.path.join(export_dir, "assets.extra", WARMUP_FILENAME)


def run_warmup(bundle: SavedModelBundle, iterations: int = 1, check_method_name: bool = False) -> int:
    """Replay the version's warmup requests; return how many records were read."""
    path = warmup_path(bundle.export_dir)
    if not os.path.exists(path):
        logger.info("No warmup data file found at %s", path)
        return 0
    logger.info("Starting to read warmup data for model at %s", path)
    started = time.monotonic()
    try:
        records = asyncio.run(_replay_file(bundle, path, iterations, check_method_name))
    except tf.errors.DataLossError as error:
        raise DataLoss(f"{error.message}. Please verify your warmup data is in TFRecord format.") from None
    logger.info(
        "Finished reading warmup data for model at %s. Number of warmup records read: %d. "
        "Elapsed time (microseconds): %d.",
        path,
        records,
        (time.monotonic() - started) * 1e6,
    )
    return records


async def _replay_file(bundle: SavedModelBundle, path: str, iterations: int, check_method_name: bool) -> int:
    records = 0
    for record in tf.data.TFRecordDataset(path).as_numpy_iterator():
        log = prediction_log_pb2.PredictionLog()
        try:
            log.ParseFromString(record)
        except Exception:  # protobuf's DecodeError; any failure means a bad record
            raise InvalidArgument(f"Failed to parse warmup record: {record!r} from {path}") from None
        for _ in range(max(iterations, 1)):
            await _replay(bundle, log, check_method_name)
        records += 1
        if records > MAX_WARMUP_RECORDS:
            raise InvalidArgument(
                f"Number of warmup records exceeds the maximum ({MAX_WARMUP_RECORDS}) at {path}"
            )
    return records


async def _replay(
    bundle: SavedModelBundle, log: prediction_log_pb2.PredictionLog, check_method_name: bool
) -> None:
    kind = log.WhichOneof("log_type")
    if kind == "predict_log":
        request = log.predict_log.request
        await run_predict(
            bundle,
            request.model_spec.signature_name,
            request.inputs,
            list(request.output_filter),
            decode_tensor,  # what a gRPC Predict decodes with, so warmup runs the same path
            check_method_name,
        )
    elif kind == "classify_log":
        classify = log.classify_log.request
        await run_classify(bundle, classify.model_spec.signature_name, classify.input, check_method_name)
    elif kind == "regress_log":
        regress = log.regress_log.request
        await run_regress(bundle, regress.model_spec.signature_name, regress.input, check_method_name)
    elif kind == "multi_inference_log":
        await run_multi_inference(bundle, log.multi_inference_log.request, check_method_name)
    elif kind is not None:
        raise Unimplemented(f"Unsupported log_type for warmup: {kind}")
