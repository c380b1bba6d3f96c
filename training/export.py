"""Export a trained model as a TensorFlow Serving version: `models_dir/<name>/<version>/`.

Signature `serving_default` takes `images` (float32 [batch, H, W, C] in [0, 1]) and answers
`probabilities` and, given a fitted training/ood.py score, `ood_score` [batch]; signature `explain`
answers `saliency` [batch, H, W] (gradient × input) and `probabilities`. `assets/` holds
labels.txt, preprocessing.json, explain.json and, with a score, ood.json for the gateway.
"""

import json
import logging
import os
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np
import tensorflow as tf

from . import ood, ood_features
from .datasets import get_spec
from .train import PIXEL_SCALE

INPUT_KEY = "images"
OUTPUT_KEY = "probabilities"
SIGNATURE = "serving_default"
EXPLAIN_SIGNATURE = "explain"
SALIENCY_KEY = "saliency"
# Gradient × input of the top label's probability (Shrikumar et al. 2017): removing what it marks is
# removing what the model used (the deletion test in tests/test_training_ood.py). On the quick models it
# passed that test a little better than integrated gradients from a black image (4 to 32 steps), at a
# sixteenth of the cost: zeroing the 10 % most salient pixels cost the top label 0.887 of probability
# on average (MNIST; CIFAR-10 0.606), integrated gradients 0.839 (0.589), as many random foreground
# pixels 0.525 (0.498).
EXPLAIN_METHOD = "gradient_x_input"

logger = logging.getLogger(__name__)


class VersionNotFoundError(ValueError):
    """The model has no exported version, or not the one asked for."""


class OutputFolderError(ValueError):
    """A folder the run would write to is a file, or one this process cannot write to."""


def check_output_folder(path, what):
    """Refuse, before a run trains for minutes, a folder it could not write its results to: a file where
    the folder would be, or under it, or a folder (or the nearest one that exists) without write access."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise OutputFolderError(f"{what} {path}: {existing} is a file, not a folder; give another {what}")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise OutputFolderError(f"{what} {path}: this process may not write in {existing}; give another "
                                f"{what}")


def list_versions(models_dir, name):
    folder = Path(models_dir) / name
    if not folder.is_dir():
        return []
    return sorted(int(path.name) for path in folder.iterdir() if path.is_dir() and path.name.isdigit())


def export_model(model, name, models_dir, *, metadata, dataset=None, add_report=None, ood_score=None):
    """Write the next version (highest existing + 1) and return its directory; never overwrites.

    `ood_score` (a calibrated ood.OodScore), if given, adds the `ood_score` output and ood.json.
    `add_report(staging_dir, record) -> record`, if given, measures the saved version and
    writes its report into it before the version appears.
    """
    spec = get_spec(dataset or name)
    model_dir = Path(models_dir) / name
    # Folders this export creates go again if it fails (Ctrl-C too): a new model leaves no empty folder.
    created = [path for path in (model_dir, *model_dir.parents) if not path.exists()]
    model_dir.mkdir(parents=True, exist_ok=True)
    # A polling model server must never see half a version: build it under a name it
    # ignores (not an integer), then rename it into place in one step.
    staging = model_dir / f".export-{uuid.uuid4().hex}"
    try:
        with tempfile.TemporaryDirectory() as asset_source:
            module = _serving_module(model, spec, Path(asset_source), ood_score)
            tf.saved_model.save(module, str(staging),
                                signatures={SIGNATURE: module.serve, EXPLAIN_SIGNATURE: module.explain})
        extra = staging / "assets.extra"
        extra.mkdir()
        record = {"parameters": int(model.count_params()), **metadata, "model": name}
        _write_warmup_requests(extra / "tf_serving_warmup_requests", name, spec)
        if add_report is not None:
            record = add_report(staging, record)
        (extra / "evaluation.json").write_text(json.dumps(record, indent=2) + "\n")
        return _move_into_place(staging, model_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        for path in created:  # deepest first; one another export has filled stays
            try:
                path.rmdir()
            except OSError:
                break
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


# How the gateway turns an upload into this data set's form (the modes of serving/gateway/preprocess.py),
# written out flag by flag so that an exported version keeps its meaning if a mode's defaults change.
UPLOAD_PREPROCESSING = {
    # MNIST: light digit on black, longer side 20 px, centred by mass in 28×28 (LeCun et al.).
    "mnist": {"mode": "mnist_digit", "invert_light_background": True, "contrast": "stretch",
              "crop": "content", "fit_box": 20, "center": "mass", "content_threshold": 0.2},
    # Fashion-MNIST: negated product shot, trimmed, longer side 28 px, centred (Xiao et al. 2017).
    "fashion_mnist": {"mode": "centered_object", "invert_light_background": True,
                      "contrast": "subtract_background", "crop": "content", "fit_box": 28, "center": "box",
                      "content_threshold": 0.05},
    # CIFAR-10: a whole photo, square, antialiased down to 32×32.
    "cifar10": {"mode": "full_frame", "invert_light_background": False, "contrast": "none",
                "crop": "center_square", "fit_box": 32, "center": "box"},
}


# A folder of one's own images names a mode; its flags are those of the built-in data set that has it.
MODE_EXAMPLES = {flags["mode"]: dataset for dataset, flags in UPLOAD_PREPROCESSING.items()}


def upload_preprocessing(spec):
    """The gateway's flags for data set `spec`: a built-in's own, or its mode's at the folder's size
    (MNIST's 20-px box in 28 scales with the frame)."""
    if spec.preprocessing is None:
        return UPLOAD_PREPROCESSING.get(spec.name, {"mode": "resize"})
    example = MODE_EXAMPLES[spec.preprocessing]
    size = max(spec.height, spec.width)
    template = get_spec(example)
    fit_box = round(UPLOAD_PREPROCESSING[example]["fit_box"] * size / max(template.height, template.width))
    return {**UPLOAD_PREPROCESSING[example], "fit_box": fit_box}


def preprocessing_spec(spec):
    """The contents of assets/preprocessing.json for data set `spec`: what the gateway needs."""
    return {
        "dataset": spec.name,
        "height": spec.height,
        "width": spec.width,
        "channels": spec.channels,
        "light_on_dark": spec.light_on_dark,
        "input_key": INPUT_KEY,
        "output_key": OUTPUT_KEY,
        "scale": PIXEL_SCALE,
        "classes": list(spec.classes),
        **upload_preprocessing(spec),
    }


def _serving_module(model, spec, asset_source, ood_score=None):
    # UTF-8 whatever the locale: a folder's class names may be any language's.
    labels = "".join(f"{label}\n" for label in spec.classes)
    (asset_source / "labels.txt").write_text(labels, encoding="utf-8")
    (asset_source / "preprocessing.json").write_text(json.dumps(preprocessing_spec(spec), indent=2) + "\n")

    module = tf.Module()
    # Keras 3 variables are not tf.Variables: track their backing values explicitly, or the
    # SavedModel's restore op leaves them empty and TF Serving answers "Could not find
    # variable" (tensorflow/serving#2226, keras-team/keras#20095). The Keras model itself
    # is not tracked: it would save every weight a second time, and the optimizer's state.
    module.model_variables = [variable.value for variable in model.variables]
    # Tracked assets are copied into <version>/assets/ by tf.saved_model.save.
    module.labels = tf.saved_model.Asset(str(asset_source / "labels.txt"))
    module.preprocessing = tf.saved_model.Asset(str(asset_source / "preprocessing.json"))
    explanation = {"signature": EXPLAIN_SIGNATURE, "output_key": SALIENCY_KEY, "method": EXPLAIN_METHOD}
    (asset_source / "explain.json").write_text(json.dumps(explanation, indent=2) + "\n")
    module.explanation = tf.saved_model.Asset(str(asset_source / "explain.json"))
    image_spec = tf.TensorSpec([None, spec.height, spec.width, spec.channels], tf.float32, name=INPUT_KEY)

    if ood_score is None:
        @tf.function(input_signature=[image_spec], autograph=False)  # no Python control flow to convert
        def serve(images):
            return {OUTPUT_KEY: model(images, training=False)}
    else:
        (asset_source / ood.ASSET).write_text(json.dumps(ood_score.asset(), indent=2) + "\n")
        module.ood = tf.saved_model.Asset(str(asset_source / ood.ASSET))
        if ood.needs_features(ood_score):
            # The same network, its penultimate features taken on the way: the probabilities are the
            # model's own, and the score costs a few small matrix products more.
            classifier = ood_features.FeatureClassifier(model, stages=bool(ood_score.stage_gaussians))
        else:  # an imported model: its answers are all the score reads
            def classifier(images):
                probabilities = model(images, training=False)
                # The score in float32 whatever the model answers (a mixed-precision softmax: float16).
                return probabilities, {"probabilities": tf.cast(probabilities, tf.float32)}, None

        @tf.function(input_signature=[image_spec], autograph=False)
        def serve(images):
            probabilities, features, logits = classifier(images)
            scores = ood.ood_scores(ood_score, images, features, logits)
            return {OUTPUT_KEY: probabilities, ood.OUTPUT_KEY: scores}

    @tf.function(input_signature=[image_spec], autograph=False)
    def explain(images):
        probabilities = model(images, training=False)
        return {SALIENCY_KEY: gradient_times_input(model, images, tf.argmax(probabilities, axis=1)),
                OUTPUT_KEY: probabilities}

    module.serve = serve
    module.explain = explain
    return module


def gradient_times_input(model, images, labels):
    """float32 [N, H, W]: per pixel, input × the gradient of the label's probability, summed over
    channels, negative evidence cut to 0."""
    with tf.GradientTape() as tape:
        tape.watch(images)
        chosen = tf.gather(model(images, training=False), labels, batch_dims=1)
    return tf.nn.relu(tf.reduce_sum(tape.gradient(chosen, images) * images, axis=-1))


def integrated_gradients(model, images, labels, steps=16):
    """float32 [N, H, W]: per pixel, input × the mean gradient of the label's probability along the
    straight path from a black image (midpoint rule), summed over channels, negative evidence cut to 0.
    All steps of all images go through the model as one batch. Measured against gradient × input, which
    `explain` answers (see EXPLAIN_METHOD)."""
    count = tf.shape(images)[0]
    alphas = (tf.range(steps, dtype=tf.float32) + 0.5) / steps
    path = tf.reshape(alphas[:, None, None, None, None] * images[None],
                      tf.concat([[-1], tf.shape(images)[1:]], axis=0))
    with tf.GradientTape() as tape:
        tape.watch(path)
        probabilities = model(path, training=False)
        chosen = tf.gather(probabilities, tf.tile(labels, [steps]), batch_dims=1)
    gradients = tape.gradient(chosen, path)
    per_step = tf.reshape(gradients, tf.concat([[steps, count], tf.shape(images)[1:]], axis=0))
    mean_gradient = tf.reduce_mean(per_step, axis=0)
    return tf.nn.relu(tf.reduce_sum(mean_gradient * images, axis=-1))


def _write_warmup_requests(path, name, spec):
    """TF Serving replays these at load time so the first real request is not slow."""
    try:
        from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2
    except ImportError:
        logger.warning("tensorflow-serving-api is not installed: no warmup requests written")
        return
    request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=name, signature_name=SIGNATURE))
    images = np.zeros((1, spec.height, spec.width, spec.channels), np.float32)
    request.inputs[INPUT_KEY].CopyFrom(tf.make_tensor_proto(images))
    log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    with tf.io.TFRecordWriter(str(path)) as writer:
        writer.write(log.SerializeToString())


def _move_into_place(staging, model_dir):
    version = max(list_versions(model_dir.parent, model_dir.name), default=0) + 1
    while True:
        target = model_dir / str(version)
        if not target.exists():
            try:
                os.rename(staging, target)
                return target
            except OSError:
                if not target.exists():
                    raise
        version += 1  # another export took this number since we looked


class ExportedModel:
    """A loaded version behind keras' `predict`, so `train.evaluate` measures it like a Keras model;
    `predict_with_scores` adds its out-of-distribution scores (None for versions without them)."""

    def __init__(self, version_dir):
        self.version_dir = Path(version_dir)
        self.loaded = tf.saved_model.load(str(version_dir))
        self.signature = self.loaded.signatures[SIGNATURE]
        self.ood = ood.read_asset(self.version_dir)
        self.preprocessing = json.loads((self.version_dir / "assets" / "preprocessing.json").read_text())

    def predict(self, images, batch_size=500, verbose=0):
        return self.predict_with_scores(images, batch_size)[0]

    def predict_with_scores(self, images, batch_size=500):
        answers = [self.signature(**{INPUT_KEY: tf.constant(images[start:start + batch_size])})
                   for start in range(0, len(images), batch_size)]
        probabilities = np.concatenate([answer[OUTPUT_KEY].numpy() for answer in answers])
        if not answers or ood.OUTPUT_KEY not in answers[0]:
            return probabilities, None
        return probabilities, np.concatenate([answer[ood.OUTPUT_KEY].numpy() for answer in answers])


def load_exported_model(models_dir, name, version=None):
    versions = list_versions(models_dir, name)
    if not versions:
        raise VersionNotFoundError(f"no exported versions of {name!r} under {Path(models_dir) / name}")
    if version is None:
        version = versions[-1]
    elif version not in versions:
        raise VersionNotFoundError(f"{name!r} has no version {version}; it has {versions}")
    return ExportedModel(Path(models_dir) / name / str(version))
