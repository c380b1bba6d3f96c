"""Regenerate serving/protos/: TensorFlow Serving's API messages without TensorFlow.

The tensorflow-serving-api wheel imports `tensorflow.core.framework...`, which runs
TensorFlow's __init__ (~600 MB, seconds). This script takes the descriptors those
wheels ship, re-emits them with grpcio-tools (with .pyi stubs, for mypy) under
`serving.protos.`, so the gateway and the SDK need only protobuf + grpcio. Run it (needs
tensorflow + tensorflow-serving-api):

    .venv/bin/python tools/generate_protos.py

It also compiles the Open Inference Protocol's service (tools/protos/inference/, KServe's
grpc_predict_v2.proto), which no wheel ships, into serving.protos.inference.
"""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from google.protobuf import descriptor_pb2

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "serving" / "protos"
PACKAGE = "serving.protos"
# The generated files' top-level packages, re-rooted under PACKAGE.
TOP_PACKAGES = "(tensorflow|tensorflow_serving|tsl|xla|inference)"
API_MODULES = [
    "tensorflow_serving.apis.predict_pb2",
    "tensorflow_serving.apis.classification_pb2",
    "tensorflow_serving.apis.regression_pb2",
    "tensorflow_serving.apis.inference_pb2",
    "tensorflow_serving.apis.get_model_metadata_pb2",
    "tensorflow_serving.apis.get_model_status_pb2",
    "tensorflow_serving.apis.model_management_pb2",
    "tensorflow_serving.apis.prediction_service_pb2",
    "tensorflow_serving.apis.model_service_pb2",
    "tensorflow_serving.apis.prediction_log_pb2",
    "tensorflow_serving.config.model_server_config_pb2",
]
# .proto files of our own under PROTO_ROOT, compiled with their gRPC stubs.
PROTO_ROOT = ROOT / "tools" / "protos"
OWN_SERVICES = ["inference/grpc_predict_v2.proto"]
SERVICES = {
    "tensorflow_serving/apis/prediction_service.proto",
    "tensorflow_serving/apis/model_service.proto",
}


def collect(file_descriptor, seen: dict[str, descriptor_pb2.FileDescriptorProto]) -> None:
    if file_descriptor.name in seen or file_descriptor.name.startswith("google/protobuf/"):
        return
    for dependency in file_descriptor.dependencies:
        collect(dependency, seen)
    proto = descriptor_pb2.FileDescriptorProto()
    file_descriptor.CopyToProto(proto)
    seen[file_descriptor.name] = proto


def main() -> None:
    files: dict[str, descriptor_pb2.FileDescriptorProto] = {}
    for module_name in API_MODULES:
        collect(importlib.import_module(module_name).DESCRIPTOR, files)
    with tempfile.TemporaryDirectory() as tmp:
        descriptor_set = Path(tmp) / "set.pb"
        descriptor_set.write_bytes(
            descriptor_pb2.FileDescriptorSet(file=list(files.values())).SerializeToString()
        )
        generated = Path(tmp) / "out"
        generated.mkdir()
        for name in files:
            outputs = [f"--python_out={generated}", f"--pyi_out={generated}"]
            if name in SERVICES:
                outputs.append(f"--grpc_python_out={generated}")
            protoc = [sys.executable, "-m", "grpc_tools.protoc", f"--descriptor_set_in={descriptor_set}"]
            subprocess.run([*protoc, *outputs, name], check=True)
        for name in OWN_SERVICES:
            outputs = [f"--{kind}_out={generated}" for kind in ("python", "pyi", "grpc_python")]
            protoc = [sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO_ROOT}"]
            subprocess.run([*protoc, *outputs, name], check=True)
        for path in OUT.iterdir():
            if path.is_dir():
                shutil.rmtree(path)
        for source in [*generated.rglob("*.py"), *generated.rglob("*.pyi")]:
            text = source.read_text()
            text = re.sub(rf"^from {TOP_PACKAGES}([. ])", rf"from {PACKAGE}.\1\2", text, flags=re.M)
            text = re.sub(rf"^import {TOP_PACKAGES}\.", rf"import {PACKAGE}.\1.", text, flags=re.M)
            target = OUT / source.relative_to(generated)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(text)
        for directory in [p for p in OUT.rglob("*") if p.is_dir()]:
            (directory / "__init__.py").touch()
    print(f"generated {len(files) + len(OWN_SERVICES)} proto files into {OUT.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
