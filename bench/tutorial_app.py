"""The tutorial way to serve a model, for comparison: one Flask app that loads the SavedModel
in its own process and calls it once per request.

`make bench` runs it on gunicorn (`bench/servers.py`: gthread workers, one per core, each loading
the model); on Flask's development server, as most "deploy your Keras model" guides show it:
`python -m bench.tutorial_app --model-dir models/mnist/1 --port 5000`, then
`curl -F image=@digit.png localhost:5000/predict`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import tensorflow as tf
from flask import Flask, jsonify, request
from PIL import Image

# Printed by each process once its model is loaded: the bench waits for every worker's line
# (bench/servers.py, TUTORIAL_LOADED).
LOADED = "tutorial app: model loaded"


def create_app(model_dir: str | Path, tensorflow_threads: int | None = None) -> Flask:
    """`tensorflow_threads`: TensorFlow's intra- and inter-op threads (default: one per core each)."""
    model_dir = Path(model_dir)
    if tensorflow_threads:
        tf.config.threading.set_intra_op_parallelism_threads(tensorflow_threads)
        tf.config.threading.set_inter_op_parallelism_threads(tensorflow_threads)
    app = Flask(__name__)
    infer = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    spec = json.loads((model_dir / "assets" / "preprocessing.json").read_text())
    labels = (model_dir / "assets" / "labels.txt").read_text().split("\n")

    @app.post("/predict")
    def predict():
        image = Image.open(request.files["image"].stream)
        image = image.convert("L" if spec["channels"] == 1 else "RGB").resize((spec["width"], spec["height"]))
        pixels = np.asarray(image, dtype=np.float32).reshape(
            1, spec["height"], spec["width"], spec["channels"]
        )
        probabilities = infer(images=tf.constant(pixels / 255.0))["probabilities"].numpy()[0]
        best = int(np.argmax(probabilities))
        return jsonify({"label": labels[best], "probability": float(probabilities[best])})

    print(f"{LOADED} (pid {os.getpid()})", file=sys.stderr, flush=True)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--port", type=int, default=5000)
    args = parser.parse_args()
    create_app(args.model_dir).run(host="127.0.0.1", port=args.port, threaded=True)


if __name__ == "__main__":
    main()
