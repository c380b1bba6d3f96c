"""NVIDIA's tritonclient, unchanged, against the server: `triton.py http|grpc HOST:PORT BATCH.npy`.

Runs in .venv-oip. Prints one JSON document: readiness, metadata, the batch's probabilities
(binary and JSON tensors over HTTP, raw contents over gRPC), version 1's, the classification
extension's strings, and the status and message of each error case.
"""

import json
import sys

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

MODEL = "digits"


def main() -> None:
    protocol, url, batch_path = sys.argv[1:4]
    batch = np.load(batch_path)
    module = httpclient if protocol == "http" else grpcclient
    client = module.InferenceServerClient(url=url)

    def infer(data, datatype="FP32", binary=True, version="", class_count=0, model=MODEL):
        tensor = module.InferInput("images", list(data.shape), datatype)
        output = module.InferRequestedOutput("probabilities", class_count=class_count)
        if protocol == "http":
            tensor.set_data_from_numpy(data, binary_data=binary)
            output = module.InferRequestedOutput("probabilities", binary_data=binary, class_count=class_count)
        else:
            tensor.set_data_from_numpy(data)
        result = client.infer(model, [tensor], model_version=version, outputs=[output])
        return result.as_numpy("probabilities")

    def error(call):
        try:
            call()
        except InferenceServerException as exception:
            return {"status": str(exception.status()), "message": exception.message()}
        return None

    def metadata(answer):
        if protocol == "http":
            return answer
        from google.protobuf import json_format

        return json_format.MessageToDict(answer, preserving_proto_field_name=True)

    classes = infer(batch, class_count=3)
    report = {
        "live": client.is_server_live(),
        "ready": client.is_server_ready(),
        "model_ready": client.is_model_ready(MODEL),
        "model_ready_v1": client.is_model_ready(MODEL, "1"),
        "server_metadata": metadata(client.get_server_metadata()),
        "model_metadata": metadata(client.get_model_metadata(MODEL)),
        "probabilities": infer(batch).tolist(),
        "probabilities_json": infer(batch, binary=False).tolist() if protocol == "http" else None,
        "probabilities_v1": infer(batch, version="1").tolist(),
        "classification": [[item.decode() for item in row] for row in classes],
        "errors": {
            "unknown_model": error(lambda: infer(batch, model="nope")),
            "unknown_version": error(lambda: infer(batch, version="7")),
            "wrong_shape": error(lambda: infer(batch.reshape(-1, 28, 28))),
            "wrong_datatype": error(lambda: infer(batch.astype(np.float64), datatype="FP64")),
        },
        "live_after": client.is_server_live(),
    }
    json.dump(report, sys.stdout)


if __name__ == "__main__":
    main()
