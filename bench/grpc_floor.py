"""The floor under any Python model server here: a PredictionService that answers every Predict
with the same constant response, on grpcio's thread-pool server (grpc.server, a thread pool, the
embedded server's message limits) and running no model. The embedded server answers Predict on
grpcio's asyncio server instead (serving/model_server/grpc_loop.py), which pays off when calls
wait for a batch.
`python -m bench` loads it as it loads the model server; what it cannot exceed, no Python
server on these cores can.
"""

from __future__ import annotations

import argparse
import signal
import sys
from concurrent import futures

import grpc
import numpy as np

from serving.protos.tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
from serving.tensors import make_tensor_proto


class ConstantPrediction(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, model: str, output: str, classes: int) -> None:
        self._response = predict_pb2.PredictResponse()
        self._response.model_spec.name = model
        self._response.model_spec.version.value = 1
        self._response.model_spec.signature_name = "serving_default"
        probabilities = np.full((1, classes), 1 / classes, dtype=np.float32)
        self._response.outputs[output].CopyFrom(make_tensor_proto(probabilities))

    def Predict(self, request: predict_pb2.PredictRequest, context: grpc.ServicerContext):  # noqa: N802
        return self._response


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.grpc_floor", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--model", default="mnist")
    parser.add_argument("--output", default="probabilities")
    parser.add_argument("--classes", type=int, default=10)
    parser.add_argument("--threads", type=int, default=32, help="like --grpc_max_threads")
    args = parser.parse_args()
    limit = 2**31 - 1
    server = grpc.server(
        futures.ThreadPoolExecutor(max_workers=args.threads),
        options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
    )
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        ConstantPrediction(args.model, args.output, args.classes), server
    )
    server.add_insecure_port(f"127.0.0.1:{args.port}")
    server.start()
    print("ready", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: server.stop(0))
    server.wait_for_termination()
    return 0


if __name__ == "__main__":
    sys.exit(main())
