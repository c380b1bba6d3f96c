"""Importing a classifier trained elsewhere (training/importer.py): a .keras file and a SavedModel folder
exported as versions that answer what the original answers, with labels, preprocessing spec, warmup and
explain signature, evaluated on a folder when given one, and with an out-of-distribution score calibrated
on it when it holds enough images; models that break the contract are refused."""

from __future__ import annotations

import json
import logging

import keras
import numpy as np
import pytest
import requests
import tensorflow as tf
from google.protobuf import text_format

from serving import model_config
from tests.gateway_stack import GatewayProcess, ModelServerProcess
from tests.test_training_folders import FOLDER_CLASSES, write_image_folder
from training.__main__ import main
from training.export import SALIENCY_KEY
from training.foreign_images import encode_png
from training.importer import MIN_CALIBRATION_IMAGES, import_model, read_labels

LABELS = sorted(FOLDER_CLASSES.values())  # the folder's sub-folders, in the model's output order


def classifier(softmax: bool = True, size: int | None = 24, channels: int = 1,
               classes: int = 3) -> keras.Model:
    """A small untrained CNN (grey images unless told): probabilities (without softmax, logits)."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((size, size, channels))
    x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(classes, activation="softmax" if softmax else None)(x)
    return keras.Model(inputs, outputs)


@pytest.fixture
def labels_file(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("".join(f"{label}\n" for label in LABELS), encoding="utf-8")
    return path


def answers(version_dir, images):
    signatures = tf.saved_model.load(str(version_dir)).signatures
    probabilities = signatures["serving_default"](images=tf.constant(images))["probabilities"].numpy()
    saliency = signatures["explain"](images=tf.constant(images))[SALIENCY_KEY].numpy()
    return probabilities, saliency


def test_keras_file_is_imported_and_evaluated_on_a_folder(tmp_path, labels_file, test_images):
    images, labels = test_images["fashion_mnist"]
    folder = write_image_folder(tmp_path / "clothes", images, labels, FOLDER_CLASSES, per_class=6)
    model = classifier()
    model.save(tmp_path / "clothes.keras")
    models_dir = tmp_path / "models"
    status = main(["import", "--name", "clothes.v2", "--model", str(tmp_path / "clothes.keras"), "--labels",
                   str(labels_file), "--preprocessing", "centered_object", "--data", str(folder),
                   "--models-dir", str(models_dir)])
    assert status == 0
    version = models_dir / "clothes.v2" / "1"
    probe = np.random.default_rng(1).random((4, 24, 24, 1), dtype=np.float32)
    probabilities, saliency = answers(version, probe)
    np.testing.assert_allclose(probabilities, model.predict(probe, verbose=0), atol=1e-5)
    assert saliency.shape == (4, 24, 24)
    assert (version / "assets" / "labels.txt").read_text(encoding="utf-8").splitlines() == LABELS
    preprocessing = json.loads((version / "assets" / "preprocessing.json").read_text())
    assert (preprocessing["mode"], preprocessing["height"], preprocessing["channels"]) == (
        "centered_object", 24, 1)
    assert (version / "assets.extra" / "tf_serving_warmup_requests").stat().st_size > 0
    record = json.loads((version / "assets.extra" / "evaluation.json").read_text())
    assert record["architecture"] == "imported" and record["skipped_files"] == 2
    assert record["test_images"] == 18 and 0 <= record["test_accuracy"] <= 1
    assert "sac à main" in (version / "REPORT.md").read_text(encoding="utf-8")
    assert model_config.registered_names(models_dir) == ["clothes.v2"]
    # 9 of 18 images are too few to calibrate a threshold on: served as before, the flag null.
    assert MIN_CALIBRATION_IMAGES > 18 // 2 and not (version / "assets" / "ood.json").exists()


CIFAR10_CLASSES = dict(enumerate(("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                   "ship", "truck")))
FASHION_CLASSES = {label: f"item {label}" for label in range(10)}


def photo_folder(folder, test_images) -> int:
    """The first 200 CIFAR-10 test images as PNGs, a sub-folder per class; answers their number."""
    images, labels = test_images["cifar10"]
    for label, name in CIFAR10_CLASSES.items():
        (folder / name).mkdir(parents=True)
        for index, image in enumerate(images[labels == label]):
            (folder / name / f"{index}.png").write_bytes(encode_png(image))
    return len(images)


def write_labels(path, classes):
    path.write_text("".join(f"{name}\n" for name in sorted(classes.values())), encoding="utf-8")
    return path


def test_an_imported_photo_model_flags_foreign_images_through_the_real_stack(tmp_path, test_images):
    folder = tmp_path / "photos"
    count = photo_folder(folder, test_images)
    assert count // 2 >= MIN_CALIBRATION_IMAGES
    write_labels(tmp_path / "labels.txt", CIFAR10_CLASSES)
    classifier(size=32, channels=3, classes=10).save(tmp_path / "photos.keras")
    models_dir = tmp_path / "models"
    version = import_model("photos", tmp_path / "photos.keras", tmp_path / "labels.txt",
                           models_dir=models_dir, data=folder, latency_runs=2, ood_images=50)

    asset = json.loads((version / "assets" / "ood.json").read_text())
    assert asset["method"] == "fisher-of-empirical-p(max_softmax, smoothness)"
    assert asset["calibration"]["images"] == count // 2 and np.isfinite(asset["threshold"])
    # The untrained network's answers say little; the input's texture tells noise from photos, and
    # solid frames are empty. Measured on the half of the folder the threshold was not set on.
    record = json.loads((version / "assets.extra" / "evaluation.json").read_text())
    measured = record["out_of_distribution"]
    assert record["test_images"] == count and measured["test_images"] == count - count // 2  # accuracy: all
    assert measured["kinds"]["uniform_noise"]["auroc"] > 0.9
    assert measured["kinds"]["solid"]["detection_rate"] == 1.0
    assert "## Out-of-distribution score" in (version / "REPORT.md").read_text()

    config_file = tmp_path / "served.config"
    config_file.write_text(text_format.MessageToString(model_config.served_config(models_dir)))
    server = ModelServerProcess(config_file, tmp_path)
    server.start(["photos"])
    gateway = GatewayProcess(server.target, models_dir, tmp_path / "gateway.log")
    try:
        gateway.start("/readyz")
        listed = requests.get(f"{gateway.url}/v1/models/photos", timeout=10).json()
        assert listed["out_of_distribution"]["threshold"] == pytest.approx(asset["threshold"])
        images, _ = test_images["cifar10"]
        noise_image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
        uploads = {"photo": encode_png(images[0]),
                   "noise": encode_png(noise_image),
                   "grey frame": encode_png(np.full((32, 32, 3), 128, np.uint8))}
        answer = requests.post(f"{gateway.url}/v1/models/photos:predict", timeout=30,
                               files=[("image", (name, data, "image/png")) for name, data in uploads.items()])
        assert answer.status_code == 200, answer.text
        photo, noise, grey = answer.json()["predictions"]
        assert isinstance(photo["in_distribution"], bool) and photo["ood_score"] < noise["ood_score"]
        assert noise["in_distribution"] is False and noise["ood_score"] > asset["threshold"]
        assert grey["in_distribution"] is False and grey["ood_score"] > 1000  # empty: by definition
    finally:
        for process in (gateway, server):
            if process.process is not None:
                process.stop()


def test_saved_model_folder_is_imported(tmp_path, labels_file):
    model = classifier()
    model.export(str(tmp_path / "saved"), verbose=False)
    models_dir = tmp_path / "models"
    assert main(["import", "--name", "clothes", "--model", str(tmp_path / "saved"),
                 "--labels", str(labels_file), "--models-dir", str(models_dir)]) == 0
    probe = np.random.default_rng(2).random((3, 24, 24, 1), dtype=np.float32)
    probabilities, _ = answers(models_dir / "clothes" / "1", probe)
    np.testing.assert_allclose(probabilities, model.predict(probe, verbose=0), atol=1e-5)
    preprocessing = json.loads((models_dir / "clothes" / "1" / "assets" / "preprocessing.json").read_text())
    assert preprocessing["mode"] == "full_frame"  # the default


@pytest.mark.parametrize(("model", "labels", "arguments", "message"), [
    (lambda: classifier(softmax=False), LABELS, (), "it answers logits or scores"),
    (classifier, LABELS[:2], (), "one row of 2 probabilities per image"),
    (lambda: classifier(size=None), LABELS, (), "give --image-size"),
    (classifier, LABELS, ("--image-size", "32"), "does not match the model's input (24x24)"),
    (lambda: classifier(size=None), LABELS, ("--image-size", "-3"), "--image-size -3 is out of range"),
    (lambda: classifier(size=None), LABELS, ("--image-size", "0"), "--image-size 0 is out of range"),
    (classifier, LABELS[:1], (), "a classifier needs at least two"),
])
def test_models_that_break_the_contract_are_refused(tmp_path, caplog, model, labels, arguments, message):
    model().save(tmp_path / "model.keras")
    (tmp_path / "labels.txt").write_text("\n".join(labels) + "\n", encoding="utf-8")
    models_dir = tmp_path / "models"
    with caplog.at_level(logging.ERROR, logger="training"):
        status = main(["import", "--name", "mine", "--model", str(tmp_path / "model.keras"), "--labels",
                       str(tmp_path / "labels.txt"), "--models-dir", str(models_dir), *arguments])
    assert status == 2
    assert message in caplog.text
    assert not models_dir.exists()  # nothing half-written


def test_a_byte_order_mark_and_blank_lines_are_not_labels(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_bytes("\ufeff".encode() + "\n\n".join(LABELS).encode() + b"\n\n")
    assert read_labels(path) == tuple(LABELS)


@pytest.mark.parametrize(("name", "path", "message"), [
    ("cifar10", "model.keras", "collides with a built-in model"),
    ("my model", "model.keras", "is not valid"),
    ("mine", "labels.txt", "neither a .keras file nor a SavedModel folder"),
    ("mine", "garbage.keras", "is not a Keras archive"),  # Keras itself said "File not found"
])
def test_bad_names_and_files_are_refused(tmp_path, caplog, labels_file, name, path, message):
    classifier().save(tmp_path / "model.keras")
    (tmp_path / "garbage.keras").write_bytes(b"not a zip archive")
    with caplog.at_level(logging.ERROR, logger="training"):
        status = main(["import", "--name", name, "--model", str(tmp_path / path),
                       "--labels", str(labels_file), "--models-dir", str(tmp_path / "models")])
    assert status == 2
    assert message in caplog.text
    assert not (tmp_path / "models").exists()


def test_a_broken_registry_is_named_after_the_export_with_what_to_run(tmp_path, labels_file, caplog):
    classifier().save(tmp_path / "model.keras")
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    (models_dir / "models.config").write_text("model_config_list { config { name: ")  # cut off
    with caplog.at_level(logging.ERROR, logger="training"):
        status = main(["import", "--name", "mine", "--model", str(tmp_path / "model.keras"), "--labels",
                       str(labels_file), "--models-dir", str(models_dir)])
    assert status == 2
    assert (models_dir / "mine" / "1" / "saved_model.pb").exists()
    assert f"python -m serving.model_config --models-dir {models_dir} --add <name>" in caplog.text


def mixed_precision_classifier(channels: int, classes: int = 10) -> keras.Model:
    """An untrained CNN whose softmax answers float16, as a model trained in mixed precision does."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((28, 28, channels))
    x = keras.layers.Conv2D(4, 3, activation="relu", dtype="mixed_float16")(inputs)
    x = keras.layers.GlobalAveragePooling2D(dtype="mixed_float16")(x)
    return keras.Model(inputs, keras.layers.Dense(classes, activation="softmax", dtype="mixed_float16")(x))


@pytest.mark.parametrize(("channels", "preprocessing", "saved_model", "method"), [
    (1, "centered_object", True, "max_softmax"),  # grey: a lone component, no texture
    (3, "full_frame", False, "fisher-of-empirical-p(max_softmax, smoothness)"),
])
def test_a_mixed_precision_model_gets_a_float32_score(tmp_path, test_images, channels, preprocessing,
                                                      saved_model, method):
    if channels == 1:
        images, labels = test_images["fashion_mnist"]
        folder = write_image_folder(tmp_path / "data", images, labels, FASHION_CLASSES, per_class=20)
        labels_file = write_labels(tmp_path / "labels.txt", FASHION_CLASSES)
    else:
        photo_folder(tmp_path / "data", test_images)
        folder, labels_file = tmp_path / "data", write_labels(tmp_path / "labels.txt", CIFAR10_CLASSES)
    model = mixed_precision_classifier(channels)
    if saved_model:
        model.export(str(tmp_path / "model"), verbose=False)
    else:
        model.save(tmp_path / "model.keras")
    models_dir = tmp_path / "models"
    model_path = tmp_path / ("model" if saved_model else "model.keras")
    status = main(["import", "--name", "mine", "--model", str(model_path), "--labels", str(labels_file),
                   "--preprocessing", preprocessing, "--data", str(folder), "--models-dir", str(models_dir)])
    assert status == 0
    version = models_dir / "mine" / "1"
    asset = json.loads((version / "assets" / "ood.json").read_text())
    assert asset["method"] == method
    assert (asset["empty_frame"]["min_foreground_pixels"] > 0) == (channels == 1)  # light on dark only
    probe = np.random.default_rng(3).random((2, 28, 28, channels), dtype=np.float32)
    probe[1] = 0.0  # an empty frame
    answer = tf.saved_model.load(str(version)).signatures["serving_default"](images=tf.constant(probe))
    scores = answer["ood_score"]
    assert scores.dtype == tf.float32 and scores[1] > 1000 > scores[0]
    _, saliency = answers(version, probe)
    assert saliency.shape == (2, 28, 28)
