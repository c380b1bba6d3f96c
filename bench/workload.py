"""What the benchmark sends: real test-set images, as PNG uploads and as TF Serving Predict
requests already serialized (so the load generator spends nothing on encoding).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from serving.protos.tensorflow_serving.apis import predict_pb2
from serving.tensors import make_tensor_proto

DISTINCT_IMAGES = 16  # requests cycle through these, so no layer can answer from a cache
BOUNDARY = "pixelgatebenchboundary"


@dataclass(frozen=True)
class Workload:
    model: str
    images: np.ndarray  # uint8 [N, H, W, C]
    input_key: str

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


def load_workload(model: str, data_dir: str | os.PathLike[str], models_dir: Path) -> Workload:
    from training.datasets import load_data  # reads the standard files; no TensorFlow

    _, (x_test, _) = load_data(model, data_dir)
    version = max(int(path.name) for path in (models_dir / model).iterdir() if path.name.isdigit())
    spec_path = models_dir / model / str(version) / "assets" / "preprocessing.json"
    input_key = (
        json.loads(spec_path.read_text()).get("input_key", "images") if spec_path.exists() else "images"
    )
    return Workload(model, x_test[:DISTINCT_IMAGES], input_key)


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
