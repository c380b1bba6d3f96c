"""The Open Inference Protocol (KServe v2, Triton's API) beside TF Serving's, over the same core.

tensors.py converts v2 tensors (JSON, binary, gRPC contents) to and from NumPy; service.py is
the protocol's transport-agnostic half (metadata, readiness, infer through ModelServerCore.predict);
rest.py answers `/v2/...` on the REST port and grpc_service.py `inference.GRPCInferenceService`.
"""
