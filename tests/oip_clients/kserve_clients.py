"""KServe's Python clients, unchanged, against the server: `kserve_clients.py rest|grpc TARGET BATCH.npy`.

Runs in .venv-oip. InferenceRESTClient (protocol v2) takes http://host:port, InferenceGRPCClient
host:port. Prints one JSON document: readiness, the batch's probabilities (JSON and binary
tensors over REST, raw contents over gRPC), the classification extension's strings, and the
status and message of each error case.
"""

import asyncio
import json
import sys

import grpc
import httpx
import numpy as np
from kserve import InferenceGRPCClient, InferenceRESTClient, InferInput, InferRequest, RESTConfig
from kserve.protocol.infer_type import RequestedOutput

MODEL = "digits"


async def main() -> None:
    transport, target, batch_path = sys.argv[1:4]
    batch = np.load(batch_path)
    if transport == "rest":
        client = InferenceRESTClient(RESTConfig(protocol="v2", retries=0))
    else:
        client = InferenceGRPCClient(target, retries=0)

    async def call(method, *arguments, **keywords):
        if transport == "rest":
            return await getattr(client, method)(target, *arguments, **keywords)
        return await getattr(client, method)(*arguments, **keywords)

    async def infer(data, datatype="FP32", binary=True, class_count=0, model=MODEL):
        tensor = InferInput("images", list(data.shape), datatype)
        tensor.set_data_from_numpy(data, binary_data=binary)
        outputs = None
        if class_count:
            outputs = [RequestedOutput("probabilities", parameters={"classification": class_count})]
        request = InferRequest(model, [tensor], request_outputs=outputs)
        if transport == "rest":
            response = await client.infer(target, request, model_name=model)
        else:
            response = await client.infer(request)
        return response.outputs[0].as_numpy()

    async def error(call):
        try:
            await call
        except httpx.HTTPStatusError as exception:
            return {"status": exception.response.status_code, "message": exception.response.json()["error"]}
        except grpc.aio.AioRpcError as exception:
            return {"status": exception.code().name, "message": exception.details()}
        return None

    classes = await infer(batch, class_count=3)
    report = {
        "live": await call("is_server_live"),
        "ready": await call("is_server_ready"),
        "model_ready": await call("is_model_ready", MODEL),
        "probabilities": (await infer(batch)).tolist(),
        "probabilities_json": (await infer(batch, binary=False)).tolist(),
        "classification": [[_text(item) for item in row] for row in classes],
        "errors": {
            "unknown_model": await error(infer(batch, model="nope")),
            "wrong_shape": await error(infer(batch.reshape(-1, 28, 28))),
            "wrong_datatype": await error(infer(batch.astype(np.float64), datatype="FP64")),
        },
        "live_after": await call("is_server_live"),
    }
    await client.close()
    json.dump(report, sys.stdout)


def _text(item):
    return item.decode() if isinstance(item, bytes) else item


if __name__ == "__main__":
    asyncio.run(main())
