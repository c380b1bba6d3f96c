"""TF Serving's REST API: `/v1/models/...` over the core (api.py), its HTTP server, and its JSON.

JSON follows tensorflow_serving/util/json_tensor.cc: request bodies (json_document.py), predict
requests (predict_request.py), classify/regress requests (examples_request.py) and every
answer (json_answers.py), written by rapidjson's PrettyWriter rules (json_writer.py).
"""
