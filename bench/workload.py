"""What the benchmark sends: real test-set images, as PNG uploads, and as TF Serving Predict
and Open Inference Protocol (KServe v2) ModelInfer requests already serialized (so the load
generator spends nothing on encoding).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from serving.protos.inference import grpc_predict_v2_pb2
from serving.protos.tensorflow_serving.apis import predict_pb2
from serving.tensors import make_tensor_proto

DISTINCT_IMAGES = 16  # requests cycle through these, so no layer can answer from a cache
BOUNDARY = "pixelgatebenchboundary"


@dataclass(frozen=True)
class Workload:
    model: str
    images: np.ndarray  # uint8 [N, H, W, C]
    input_key: str
    output_key: str = "probabilities"

    @property
    def shape(self) -> tuple[int, int, int]:
        height, width, channels = self.images.shape[1:]
        return height, width, channels

    def floats(self) -> np.ndarray:
        """The images as the model takes them: float32 in [0, 1]."""
        return self.images.astype(np.float32) / np.float32(255.0)

    def pngs(self) -> list[bytes]:
        return [encode_png(image) for image in self.images]

    def multipart_bodies(self) -> list[bytes]:
        """One `image` field per body, as `curl -F image=@digit.png` sends it."""
        return [multipart_body(png) for png in self.pngs()]

    def predict_requests(self) -> list[bytes]:
        """Serialized single-image PredictRequests, the tensor as tensor_content like the gateway's."""
        requests = []
        for image in self.floats():
            request = predict_pb2.PredictRequest()
            request.model_spec.name = self.model
            request.model_spec.signature_name = "serving_default"
            request.inputs[self.input_key].CopyFrom(make_tensor_proto(image[np.newaxis]))
            requests.append(request.SerializeToString())
        return requests

    def model_infer_requests(self) -> list[bytes]:
        """The same images as serialized single-image ModelInferRequests: the signature's input
        as FP32 in raw_input_contents (the bytes Predict's tensor_content carries; tritonclient's
        default), asking for the output Predict answers."""
        requests = []
        for image in self.floats():
            request = grpc_predict_v2_pb2.ModelInferRequest(model_name=self.model)
            request.inputs.add(name=self.input_key, datatype="FP32", shape=[1, *image.shape])
            request.outputs.add(name=self.output_key)
            request.raw_input_contents.append(np.ascontiguousarray(image, dtype="<f4").tobytes())
            requests.append(request.SerializeToString())
        return requests


def load_workload(model: str, data_dir: str | os.PathLike[str], models_dir: Path) -> Workload:
    from training.datasets import load_data  # reads the standard files; no TensorFlow

    _, (x_test, _) = load_data(model, data_dir)
    version = max(int(path.name) for path in (models_dir / model).iterdir() if path.name.isdigit())
    spec_path = models_dir / model / str(version) / "assets" / "preprocessing.json"
    spec = json.loads(spec_path.read_text()) if spec_path.exists() else {}
    return Workload(
        model,
        x_test[:DISTINCT_IMAGES],
        spec.get("input_key", "images"),
        spec.get("output_key", "probabilities"),
    )


def encode_png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image.squeeze(-1) if image.shape[-1] == 1 else image).save(buffer, format="PNG")
    return buffer.getvalue()


def multipart_body(png: bytes) -> bytes:
    return (
        (
            f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="image"; filename="image.png"\r\n'
            f"Content-Type: image/png\r\n\r\n"
        ).encode()
        + png
        + f"\r\n--{BOUNDARY}--\r\n".encode()
    )


MULTIPART_CONTENT_TYPE = f"multipart/form-data; boundary={BOUNDARY}"
