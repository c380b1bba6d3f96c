"""Import a classifier trained elsewhere (a .keras file or a SavedModel folder) as a new version of a
model: wrapped into the serving contract (`images` float32 [N, H, W, C] in [0, 1] -> `probabilities`),
checked on a few inputs, and exported like a trained version (labels, preprocessing spec, explain
signature, warmup requests; with a folder of labelled images, an evaluation report and an
out-of-distribution score read from the model's answers, its threshold calibrated on half the folder).
"""

import datetime
import logging
import zipfile
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from serving.model_config import register_model

from . import ood
from .datasets import DatasetSpec, check_model_name
from .export import ExportedModel, check_output_folder, export_model, preprocessing_spec
from .folders import check_image_size, read_test_folder
from .foreign_images import as_served
from .metrics import classification_metrics
from .ood_report import evaluate_ood
from .report import (
    CONFUSION_MATRIX,
    RELIABILITY,
    directory_size,
    measure_latency,
    out_of_distribution_section,
    plot_confusion_matrix,
    plot_reliability,
)
from .train import PIXEL_SCALE

# A probability row sums to 1 give or take float32 rounding (and a softmax in float16).
SUM_TOLERANCE = 1e-3
# With --data, every image measures the accuracy; half of them (a fixed shuffle) calibrate the
# out-of-distribution threshold and the other half measure it, as a trained model's validation and test
# splits.
MIN_CALIBRATION_IMAGES = ood.MIN_CALIBRATION_IMAGES  # fewer: exported without a score

logger = logging.getLogger(__name__)


class ModelImportError(ValueError):
    """A model that cannot be imported as it is; the message says what to change."""


def import_model(name, model_path, labels_path, *, models_dir="models", preprocessing="full_frame", data=None,
                 image_size=None, latency_runs=50, ood_images=500):
    """Check and export `model_path` as the next version of model `name`; returns the version directory.
    `ood_images`: foreign images of each kind for the report's out-of-distribution table."""
    check_model_name(name)
    check_output_folder(Path(models_dir) / name, "--models-dir")
    classes = read_labels(labels_path)
    model = load_classifier(model_path)
    height, width, channels = input_size(model, image_size)
    spec = DatasetSpec(name=name, height=height, width=width, channels=channels, classes=classes,
                       light_on_dark=preprocessing != "full_frame", preprocessing=preprocessing)
    check_probabilities(model, spec)
    metadata = {
        "dataset": name,
        "architecture": "imported",
        "imported_from": str(Path(model_path).resolve()),
        "input_shape": [height, width, channels],
        "imported_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
    }
    report = ood_score = None
    if data is not None:
        images, labels, summary = read_test_folder(data, spec)
        order = np.random.default_rng(0).permutation(len(images))
        calibration, held_out = np.sort(order[: len(order) // 2]), np.sort(order[len(order) // 2:])
        if len(calibration) >= MIN_CALIBRATION_IMAGES:
            ood_score = fit_answer_score(model, spec, images[calibration])
            metadata.update({"ood_threshold": ood_score.threshold, "ood_calibration": ood_score.calibration,
                             "ood_method": ood.method_name(ood_score.standardization)})
        else:
            logger.info("%s: %d images in %s, fewer than %d to calibrate an out-of-distribution threshold "
                        "on: exported without a score", name, len(images), data, 2 * MIN_CALIBRATION_IMAGES)
        inputs = images.astype(np.float32) / PIXEL_SCALE
        probabilities = np.asarray(model.predict(inputs, batch_size=256, verbose=0))
        metadata.update(summary)
        evaluation = classification_metrics(probabilities, labels)
        metadata.update({
            "test_accuracy": evaluation["accuracy"],
            "test_images": evaluation["test_images"],
            "per_class_accuracy": dict(zip(classes, evaluation["per_class_accuracy"], strict=True)),
            "expected_calibration_error": evaluation["expected_calibration_error"],
            "confusion_matrix": evaluation["confusion_matrix"],
        })

        def report(staging, record):
            if ood_score is not None:
                exported = ExportedModel(staging)
                record = {**record, "out_of_distribution": evaluate_ood(
                    exported, spec, exported.preprocessing, ood_score.threshold, count=ood_images,
                    test_set=(images[held_out], labels[held_out]))}
            return write_import_report(staging, record, probabilities, labels, latency_runs)

    version_dir = export_model(model, name, models_dir, metadata=metadata, dataset=spec, add_report=report,
                               ood_score=ood_score)
    logger.info("%s: imported %s as %s", name, model_path, version_dir)
    register_model(models_dir, name)  # models.config lists it: a running `make serve` picks it up
    return version_dir


def fit_answer_score(model, spec, images):
    """The out-of-distribution score of a model known only by its answers (ood.ANSWER_COMPONENTS),
    fitted and calibrated on `images` (uint8) as the gateway preprocesses them."""
    # As the gateway serves them, which for a folder's images is what the accuracy measured too; float32
    # whatever the model answers (a mixed-precision softmax answers float16).
    inputs = as_served(images, preprocessing_spec(spec))
    features = {"probabilities": np.asarray(model.predict(inputs, batch_size=256, verbose=0), np.float32)}
    score = ood.fit_ood_score(features, None, inputs, len(spec.classes), light_on_dark=spec.light_on_dark,
                              components=ood.components_for(spec.light_on_dark, answers_only=True))
    score = ood.calibrate(score, inputs, features, None, split="calibration")
    logger.info("%s: out-of-distribution threshold %.4g, %s", spec.name, score.threshold, score.calibration)
    return score


def read_labels(path):
    path = Path(path)
    try:
        # utf-8-sig: a byte-order mark (Windows editors write one) is not part of the first label.
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ModelImportError(f"cannot read the labels file {path} ({error}); give a UTF-8 text file with "
                               "one class name a line") from None
    # The gateway reads labels.txt trimmed, line by line.
    classes = tuple(line.strip() for line in lines if line.strip())
    if len(classes) < 2:
        raise ModelImportError(f"{path} names {len(classes)} class(es); a classifier needs at least two, "
                               "one a line, in the order of the model's outputs")
    if len(set(classes)) != len(classes):
        repeated = sorted({label for label in classes if classes.count(label) > 1})
        raise ModelImportError(f"{path} names {', '.join(map(repr, repeated))} more than once; name each "
                               "class once")
    return classes


def load_classifier(path):
    """A Keras model from a .keras file, or wrapping the serving_default signature of a SavedModel."""
    path = Path(path)
    if path.is_file() and path.suffix == ".keras":
        if not zipfile.is_zipfile(path):  # Keras would answer "File not found" for a file that is there
            raise ModelImportError(f"{path} is not a Keras archive (a .keras file is a zip archive that "
                                   "model.save() writes); save the model again, or give a SavedModel folder")
        try:
            return keras.saving.load_model(str(path), compile=False)
        except Exception as error:  # noqa: BLE001 - whatever Keras raises, the file cannot be loaded as it is
            raise ModelImportError(f"cannot load {path} with Keras ({type(error).__name__}: {error}); custom "
                                   "layers must be registered with keras.saving.register_keras_serializable, "
                                   "or export a SavedModel instead") from None
    if path.is_dir() and (path / "saved_model.pb").exists():
        return _saved_model_classifier(path)
    raise ModelImportError(f"{path} is neither a .keras file nor a SavedModel folder (with saved_model.pb)")


def _saved_model_classifier(path):
    try:
        signatures = tf.saved_model.load(str(path)).signatures
    except Exception as error:  # noqa: BLE001
        raise ModelImportError(f"cannot load the SavedModel in {path} "
                               f"({type(error).__name__}: {error})") from None
    if "serving_default" not in signatures:
        raise ModelImportError(f"the SavedModel in {path} has no serving_default signature (it has "
                               f"{', '.join(signatures) or 'none'}); export it with one")
    signature = signatures["serving_default"]
    inputs = signature.structured_input_signature[1]
    if len(inputs) != 1:
        raise ModelImportError(f"serving_default of {path} takes {len(inputs)} inputs ({', '.join(inputs)}); "
                               "it must take one batch of images")
    (input_spec,) = inputs.values()
    if input_spec.shape.rank != 4:
        raise ModelImportError(f"serving_default of {path} takes shape {input_spec.shape}; it must take "
                               "images [batch, height, width, channels]")
    outputs = signature.structured_outputs
    output_key = "probabilities" if "probabilities" in outputs else next(iter(outputs))
    if len(outputs) > 1 and output_key != "probabilities":
        raise ModelImportError(f"serving_default of {path} answers {', '.join(outputs)}; name the "
                               "probabilities output 'probabilities'")
    layer = keras.layers.TFSMLayer(str(path), call_endpoint="serving_default")
    images = keras.Input(shape=tuple(input_spec.shape[1:]), name="images")
    answer = layer(images)
    probabilities = answer[output_key] if isinstance(answer, dict) else answer
    return keras.Model(images, probabilities, name="imported")


def input_size(model, image_size=None):
    """(height, width, channels) of the model's one image input."""
    if len(model.inputs) != 1:
        raise ModelImportError(f"the model takes {len(model.inputs)} inputs; it must take one batch of "
                               "images")
    shape = tuple(model.inputs[0].shape)
    if len(shape) != 4:
        raise ModelImportError(f"the model's input has shape {shape}; it must be images [batch, height, "
                               "width, channels] (rank 4)")
    _, height, width, channels = shape
    if channels not in (1, 3):
        raise ModelImportError(f"the model takes {channels} channels; the gateway sends 1 (grey) or 3 (RGB)")
    check_image_size(image_size, ModelImportError)
    if height is None or width is None:
        if image_size is None:
            raise ModelImportError("the model's input size is not fixed; give --image-size (pixels per side)")
        return image_size, image_size, channels
    if image_size is not None and (height, width) != (image_size, image_size):
        raise ModelImportError(f"--image-size {image_size} does not match the model's input "
                               f"({height}x{width})")
    return height, width, channels


def check_probabilities(model, spec):
    """Run the model on a few inputs: one row per image, as many values as labels, each row summing to 1."""
    rng = np.random.default_rng(0)
    shape = (spec.height, spec.width, spec.channels)
    probes = np.stack([np.zeros(shape), np.ones(shape), np.full(shape, 0.5),
                       *rng.random((3, *shape))]).astype(np.float32)
    try:
        answer = np.asarray(model(tf.constant(probes), training=False))
    except Exception as error:  # noqa: BLE001 - the model's own failure, reported as such
        raise ModelImportError(f"the model fails on a batch of {len(probes)} images of {shape} "
                               f"({type(error).__name__}: {error})") from None
    if answer.shape != (len(probes), len(spec.classes)):
        raise ModelImportError(
            f"for {len(probes)} images the model answers shape {answer.shape}, not ({len(probes)}, "
            f"{len(spec.classes)}): one row of {len(spec.classes)} probabilities per image (one per label)")
    sums = answer.sum(axis=1)
    finite = np.all(np.isfinite(answer))
    if not finite or answer.min() < -SUM_TOLERANCE or np.abs(sums - 1).max() > SUM_TOLERANCE:
        raise ModelImportError(
            f"the model's output is not probabilities: rows sum to {sums.min():.3g} to {sums.max():.3g}, "
            f"values {answer.min():.3g} to {answer.max():.3g}; it answers logits or scores. End it with a "
            "softmax (e.g. keras.layers.Softmax()) and import it again")


def write_import_report(version_dir, record, probabilities, labels, latency_runs=50):
    """REPORT.md and its pictures for an imported version measured on a folder of labelled images."""
    extra = Path(version_dir) / "assets.extra"
    classes = list(record["per_class_accuracy"])
    record = {**record, "size_bytes": directory_size(version_dir),
              "batch1_latency": measure_latency(version_dir, tuple(record["input_shape"]), runs=latency_runs)}
    plot_confusion_matrix(record["confusion_matrix"], classes, extra / CONFUSION_MATRIX,
                          f"{record['model']} (imported): {record['test_images']} images")
    plot_reliability(probabilities, labels, extra / RELIABILITY,
                     f"calibration: ECE {record['expected_calibration_error']:.4f}")
    latency = record["batch1_latency"]
    lines = [
        f"# {record['model']}: evaluation report",
        "",
        f"Imported {record['imported_at']} from `{record['imported_from']}`, measured on every image of "
        f"`{record['data']}`" + (" (the out-of-distribution threshold calibrated on half of them, measured "
                                 "on the other half)." if "out_of_distribution" in record else "."),
        "",
        "| | |",
        "| --- | --- |",
        f"| accuracy | **{record['test_accuracy']:.2%}** on {record['test_images']:,} images |",
        f"| expected calibration error | {record['expected_calibration_error']:.4f} (15 equal-width bins) |",
        f"| parameters | {record['parameters']:,} |",
        f"| batch-1 latency | {latency['median_ms']:.2f} ms median, {latency['p90_ms']:.2f} ms p90 |",
        f"| size on disk | {record['size_bytes'] / 1e6:.1f} MB |",
        "",
        "## Per-class accuracy",
        "",
        "| class | accuracy |",
        "| --- | --- |",
        *(f"| {label} | {value:.2%} |" if value is not None else f"| {label} | n/a |"
          for label, value in record["per_class_accuracy"].items()),
        "",
        f"![confusion matrix](assets.extra/{CONFUSION_MATRIX})",
        "",
        f"![reliability diagram](assets.extra/{RELIABILITY})",
        "",
        *out_of_distribution_section(record),
    ]
    (Path(version_dir) / "REPORT.md").write_text("\n".join(lines), encoding="utf-8")
    return record

