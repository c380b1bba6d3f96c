"""Tests for training/: data loading from the standard files, the missing-data message,
export (versions, assets, signature names), the report inside a version and resuming,
all with tiny models. Metrics and pictures: test_training_report.py; recipes: test_training_recipes.py.
"""

import gzip
import json
import logging
import pickle
import re
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from tests.conftest import require_data
from training.__main__ import main
from training.augmentation import Augmentation
from training.datasets import DATASETS, DatasetNotFoundError, load_data, load_exact_test_mask
from training.export import export_model, list_versions, load_exported_model
from training.models import build_baseline_mlp, build_model
from training.pipeline import train_and_export
from training.train import evaluate, train


@pytest.mark.parametrize("name", list(DATASETS))
def test_load_data_shapes_and_dtypes(data_dir, name):
    require_data(data_dir, name)
    spec = DATASETS[name]
    (x_train, y_train), (x_test, y_test) = load_data(name, data_dir)
    assert x_train.shape[1:] == x_test.shape[1:] == (spec.height, spec.width, spec.channels)
    assert x_train.dtype == x_test.dtype == np.uint8
    assert y_train.shape == (len(x_train),) and y_test.shape == (len(x_test),) == (10000,)
    assert np.issubdtype(y_train.dtype, np.integer)
    assert set(np.unique(y_test)) == set(range(len(spec.classes)))


def test_cifar10_exact_test_mask(data_dir):
    require_data(data_dir, "cifar10")
    mask = load_exact_test_mask("cifar10", data_dir)
    assert mask.shape == (10000,) and mask.dtype == bool and 0 < mask.sum() < 10000
    assert load_exact_test_mask("mnist", data_dir) is None


def write_idx(path, array):
    header = bytes([0, 0, 0x08, array.ndim]) + np.array(array.shape, ">u4").tobytes()
    with gzip.open(path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


def test_reads_fashion_mnist_idx_files(tmp_path):
    folder = tmp_path / "fashion-mnist"
    folder.mkdir()
    images = np.arange(5 * 28 * 28).reshape(5, 28, 28) % 256
    for split in ("train", "t10k"):
        write_idx(folder / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(folder / f"{split}-labels-idx1-ubyte.gz", np.arange(5))
    (x_train, y_train), _ = load_data("fashion_mnist", tmp_path)
    assert x_train.shape == (5, 28, 28, 1)
    np.testing.assert_array_equal(x_train[..., 0], images)
    np.testing.assert_array_equal(y_train, np.arange(5))


def test_reads_official_cifar10_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    # One image per batch whose red, green and blue planes are 1, 2 and 3.
    row = np.repeat(np.array([1, 2, 3], np.uint8), 32 * 32)[None, :]
    for filename in [f"data_batch_{index}" for index in range(1, 6)] + ["test_batch"]:
        with open(folder / filename, "wb") as file:
            pickle.dump({b"data": row, b"labels": [7]}, file)
    (x_train, y_train), (x_test, y_test) = load_data("cifar10", tmp_path)
    assert x_train.shape == (5, 32, 32, 3) and x_test.shape == (1, 32, 32, 3)
    assert x_train[0, 5, 9].tolist() == [1, 2, 3]
    assert y_train.tolist() == [7] * 5


@pytest.mark.parametrize("name", list(DATASETS))
def test_missing_data_says_what_to_put_where(tmp_path, monkeypatch, name):
    def no_internet():
        raise OSError("no route to host")

    monkeypatch.setattr(getattr(keras.datasets, name), "load_data", no_internet)
    monkeypatch.setenv("DATA_DIR", str(tmp_path))
    with pytest.raises(DatasetNotFoundError) as error:
        load_data(name)
    message = str(error.value)
    assert str(tmp_path) in message and "DATA_DIR" in message and "no route to host" in message
    assert DATASETS[name].files in message


@pytest.mark.parametrize(
    ("filename", "content"),
    [("mnist.npz", b"version https://git-lfs.github.com/spec/v1\noid sha256:0\nsize 1\n"),  # an LFS pointer
     ("mnist.npz", b""), ("cifar10.npz", b"PK\x03\x04 truncated")],
)
def test_an_unreadable_data_file_says_what_to_put_where(tmp_path, filename, content):
    (tmp_path / filename).write_bytes(content)
    name = filename.removesuffix(".npz")
    with pytest.raises(DatasetNotFoundError) as error:
        load_data(name, tmp_path)
    message = str(error.value)
    assert "cannot be read" in message and str(tmp_path) in message and DATASETS[name].files in message


def test_the_data_dir_defaults_to_the_shared_folder_beside_the_checkout(monkeypatch, tmp_path):
    from training import datasets

    monkeypatch.delenv("DATA_DIR", raising=False)
    monkeypatch.setattr(datasets, "SHARED_DATA_DIR", tmp_path)
    assert datasets.resolve_data_dir() == tmp_path
    monkeypatch.setattr(datasets, "SHARED_DATA_DIR", tmp_path / "absent")
    assert datasets.resolve_data_dir() == Path.home() / ".keras" / "datasets"
    monkeypatch.setenv("DATA_DIR", "/somewhere")
    assert datasets.resolve_data_dir() == Path("/somewhere")


def test_cli_refuses_a_limit_that_leaves_no_validation_image(tmp_path, data_dir, caplog):
    require_data(data_dir, "mnist")
    arguments = ["train", "--model", "mnist", "--profile", "quick", "--limit", "9", "--epochs", "1",
                 "--models-dir", str(tmp_path), "--data-dir", str(data_dir)]
    with caplog.at_level(logging.ERROR):
        assert main(arguments) == 2
    assert "leave no validation image" in caplog.text and "--limit 10 or more" in caplog.text
    assert list_versions(tmp_path, "mnist") == []


def read_json(path):
    return json.loads(Path(path).read_text())


def test_export_writes_new_versions_with_assets_and_signature(tmp_path):
    model = build_model("mnist", profile="tiny")
    first = export_model(model, "mnist", tmp_path, metadata={"test_accuracy": 0.5})
    second = export_model(model, "mnist", tmp_path, metadata={"test_accuracy": 0.6})
    assert (first.name, second.name) == ("1", "2")
    assert list_versions(tmp_path, "mnist") == [1, 2]
    assert sorted(path.name for path in (tmp_path / "mnist").iterdir()) == ["1", "2"]  # no staging left

    assert (second / "assets" / "labels.txt").read_text().splitlines() == list("0123456789")
    preprocessing = read_json(second / "assets" / "preprocessing.json")
    assert preprocessing["input_key"] == "images" and preprocessing["output_key"] == "probabilities"
    assert preprocessing["height"] == 28 and preprocessing["channels"] == 1
    assert preprocessing["light_on_dark"] is True and preprocessing["scale"] == 255.0
    record = read_json(second / "assets.extra" / "evaluation.json")
    assert record["test_accuracy"] == 0.6 and record["parameters"] == model.count_params()

    signature = tf.saved_model.load(str(second)).signatures["serving_default"]
    assert list(signature.structured_input_signature[1]) == ["images"]
    assert signature.structured_input_signature[1]["images"].shape.as_list() == [None, 28, 28, 1]
    outputs = signature(images=tf.zeros([2, 28, 28, 1]))
    assert list(outputs) == ["probabilities"] and outputs["probabilities"].shape == (2, 10)


def test_export_restores_in_a_tf1_session_like_tf_serving(tmp_path):
    # TF Serving's C++ loader runs the SavedModel's restore op; untracked Keras 3 variables
    # would load fine through tf.saved_model.load yet be missing there.
    model = build_model("mnist", profile="tiny")
    version_dir = export_model(model, "mnist", tmp_path, metadata={})
    images = np.random.default_rng(0).random((2, 28, 28, 1), dtype=np.float32)
    with tf.compat.v1.Session(graph=tf.Graph()) as session:
        meta_graph = tf.compat.v1.saved_model.loader.load(session, ["serve"], str(version_dir))
        signature = meta_graph.signature_def["serving_default"]
        probabilities = session.run(signature.outputs["probabilities"].name,
                                    {signature.inputs["images"].name: images})
    np.testing.assert_allclose(probabilities, model.predict(images, verbose=0), atol=1e-5)


def test_augmented_training_exports_a_plain_graph(tmp_path):
    # Random layers inside the model would put their seed state in the serving graph.
    images = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    model = build_model("cifar10", profile="tiny")
    history = train(model, images, np.arange(64) % 10, epochs=1, batch_size=16,
                    verbose=0, augmentation=Augmentation(shift=4, reflect=True, flip=True, rotation=10,
                                                         zoom=0.1, cutout=8))
    assert len(history["loss"]) == 1
    version_dir = export_model(model, "cifar10", tmp_path, metadata={})
    scaled = images[:4] / np.float32(255)
    exported = load_exported_model(tmp_path, "cifar10").predict(scaled)
    np.testing.assert_allclose(exported, model.predict(scaled, verbose=0), atol=1e-5)
    assert version_dir.name == "1"


def test_train_and_export_records_evaluation(tmp_path, data_dir):
    require_data(data_dir, "mnist")
    version_dir = train_and_export("mnist", profile="tiny", models_dir=tmp_path, data_dir=data_dir,
                                   limit=600, epochs=1, verbose=0)
    record = read_json(version_dir / "assets.extra" / "evaluation.json")
    assert record["training_images"] == 600 and record["profile"] == "tiny"
    assert record["test_accuracy"] > 0.5  # better than chance (0.1) even after 20 steps
    assert set(record["per_class_accuracy"]) == set(DATASETS["mnist"].classes)
    _, (x_test, y_test) = load_data("mnist", data_dir)
    reloaded = evaluate(load_exported_model(tmp_path, "mnist"), x_test, y_test)
    assert reloaded["accuracy"] == pytest.approx(record["test_accuracy"], abs=1e-3)
    assert reloaded["confusion_matrix"] == record["confusion_matrix"]


def test_every_version_carries_its_report(tmp_path, data_dir):
    require_data(data_dir, "cifar10")
    version_dir = train_and_export("cifar10", profile="tiny", models_dir=tmp_path, data_dir=data_dir,
                                   limit=500, epochs=2, verbose=0, logs_dir=tmp_path / "logs", latency_runs=3)
    extra = version_dir / "assets.extra"
    record = read_json(extra / "evaluation.json")
    matrix = np.array(record["confusion_matrix"])
    assert matrix.shape == (10, 10) and matrix.sum() == record["test_images"] == 10000
    assert np.trace(matrix) / matrix.sum() == pytest.approx(record["test_accuracy"])
    assert 0 <= record["expected_calibration_error"] <= 1
    assert record["temperature"] > 0 and 0 <= record["uncalibrated_expected_calibration_error"] <= 1
    assert 0 < record["exact_test_images"] < 10000 and 0 <= record["exact_test_accuracy"] <= 1
    model = build_model("cifar10", profile="tiny")
    assert record["parameters"] == model.count_params()
    # tiny: 3x3 convolutions 3->8 at 32x32 and 8->16 at 16x16, then a dense 8*8*16 -> 10.
    assert record["multiply_adds_per_image"] == 32 * 32 * 8 * 27 + 16 * 16 * 16 * 72 + 8 * 8 * 16 * 10
    assert record["flops_per_image"] == 2 * record["multiply_adds_per_image"]
    assert record["batch1_latency"]["median_ms"] > 0 and record["size_bytes"] > 0
    history = record["history"]
    assert len(history["loss"]) == len(history["val_accuracy"]) == record["epochs_run"] == 2
    assert "no GPU" in record["hardware"] or "GPUs" in record["hardware"]
    for picture in ("confusion_matrix.png", "training_curves.png", "reliability.png"):
        assert (extra / picture).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    report = (version_dir / "REPORT.md").read_text()
    for link in re.findall(r"\]\(([^)]+)\)", report):
        assert (version_dir / link).is_file(), link
    assert f"{record['test_accuracy']:.2%}" in report and f"{record['exact_test_accuracy']:.2%}" in report
    assert (tmp_path / "logs" / "cifar10-cnn-tiny" / "history.jsonl").is_file()
    assert any((tmp_path / "logs" / "cifar10-cnn-tiny" / "tensorboard").rglob("events.out.tfevents.*"))


def test_an_interrupted_export_leaves_nothing_in_models(tmp_path):
    model = build_model("mnist", profile="tiny", steps_per_epoch=1)

    def interrupted(staging, record):
        assert staging.is_dir()  # the version was being written
        raise KeyboardInterrupt("interrupted")

    with pytest.raises(KeyboardInterrupt):
        export_model(model, "mnist", tmp_path / "models", metadata={}, add_report=interrupted)
    assert not (tmp_path / "models").exists()  # not even the empty folders of a new model
    (tmp_path / "kept" / "mnist").mkdir(parents=True)
    with pytest.raises(KeyboardInterrupt):
        export_model(model, "mnist", tmp_path / "kept", metadata={}, add_report=interrupted)
    assert list((tmp_path / "kept").rglob("*")) == [tmp_path / "kept" / "mnist"]  # what was there stays


def test_sigterm_during_the_export_leaves_nothing_in_models(tmp_path, data_dir):
    """What docker stop, Kubernetes and timeout send: the run stops as after Ctrl-C, through the cleanup
    of the version it was writing (before, its staging folder stayed in models/mnist/ for good)."""
    import signal
    import subprocess
    import sys
    import time

    require_data(data_dir, "mnist")
    models = tmp_path / "models"
    run = subprocess.Popen([sys.executable, "-m", "training", "train", "--model", "mnist", "--profile",
                            "tiny", "--limit", "600", "--epochs", "1", "--models-dir", str(models),
                            "--data-dir", str(data_dir), "--logs-dir", str(tmp_path / "logs")],
                           cwd=Path(__file__).resolve().parent.parent, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        while not list(models.glob("mnist/.export-*")):  # the version is being written
            assert run.poll() is None and time.monotonic() < deadline, "the export was never seen under way"
            time.sleep(0.01)
        run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=60) == 128 + signal.SIGTERM
    finally:
        run.kill()
    assert not (models / "mnist").exists()  # nothing half-written, not even the new model's folder


@pytest.mark.parametrize(("arguments", "message"), [
    (("--epochs", "-1"), "argument --epochs: '-1' is not a whole number of at least 1"),
    (("--epochs", "0"), "argument --epochs: '0' is not a whole number of at least 1"),
    (("--limit", "-5"), "argument --limit: '-5' is not a whole number of at least 1"),
])
def test_cli_refuses_epochs_and_limits_below_one(tmp_path, capsys, arguments, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "mnist", "--profile", "tiny", "--models-dir", str(tmp_path), *arguments])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("option", ["--models-dir", "--logs-dir"])
def test_cli_refuses_an_output_folder_it_cannot_write_before_training(tmp_path, caplog, option):
    (tmp_path / "a-file").write_text("")
    folders = {"--models-dir": str(tmp_path / "models"), "--logs-dir": str(tmp_path / "logs"),
               option: str(tmp_path / "a-file" / "below")}
    with caplog.at_level(logging.ERROR, logger="training"):
        status = main(["train", "--model", "mnist", "--profile", "tiny", "--data-dir",
                       str(tmp_path / "no-data"), *(part for item in folders.items() for part in item)])
    # Refused before the data are even read (there are none here), not after the training.
    assert status == 2 and f"{option} {tmp_path / 'a-file' / 'below'}" in caplog.text
    assert f"{tmp_path / 'a-file'} is a file, not a folder" in caplog.text
    assert sorted(path.name for path in tmp_path.iterdir()) == ["a-file"]


@pytest.mark.parametrize(("arguments", "message"), [
    (("--foreign-count", "0"), "'0' is not a whole number from 1 to 10,000"),
    (("--foreign-count", "20000"), "'20000' is not a whole number from 1 to 10,000"),
    (("--test-count", "-999"), "'-999' is not a whole number of at least 1"),  # was the last 999 left out
    (("--seed", "-1"), "'-1' is not a whole number of at least 0"),
])
def test_cli_evaluate_refuses_counts_it_cannot_draw(tmp_path, capsys, arguments, message):
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", "--model", "mnist", "--models-dir", str(tmp_path), *arguments])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_cli_image_size_zero_is_refused_for_a_built_in_model(tmp_path, caplog):
    with caplog.at_level(logging.ERROR, logger="training"):
        status = main(["train", "--model", "mnist", "--image-size", "0", "--models-dir", str(tmp_path)])
    assert status == 2
    assert "--image-size and --preprocessing apply to --data folders only" in caplog.text


def test_cli_if_missing_skips_exported_models(tmp_path, data_dir, capsys, caplog):
    require_data(data_dir, "mnist")
    arguments = ["train", "--model", "mnist", "--profile", "tiny", "--limit", "300", "--epochs", "1",
                 "--models-dir", str(tmp_path), "--data-dir", str(data_dir), "--if-missing"]
    assert main(arguments) == 0
    assert main(arguments) == 0
    assert list_versions(tmp_path, "mnist") == [1]
    assert "skipped" in capsys.readouterr().out
    # 30 validation images are too few for a threshold (one image once gave 0: every input flagged).
    assert "30 validation images, fewer than the 50" in caplog.text
    assert not (tmp_path / "mnist" / "1" / "assets" / "ood.json").exists()


def test_baseline_mlp_is_the_course_network():
    model = build_baseline_mlp()
    assert [layer.__class__.__name__ for layer in model.layers] == ["Flatten", "Dense", "Dense"]
    assert model.layers[1].units == 512 and model.optimizer.__class__.__name__ == "RMSprop"
    assert model.output_shape == (None, 10)


def test_baseline_mlp_trains_on_the_course_recipe(tmp_path, data_dir):
    require_data(data_dir, "mnist")
    version_dir = train_and_export("mnist", architecture="mlp", models_dir=tmp_path, data_dir=data_dir,
                                   limit=1000, epochs=1, verbose=0, latency_runs=3)
    record = read_json(version_dir / "assets.extra" / "evaluation.json")
    assert record["architecture"] == "mlp" and record["profile"] is None and record["batch_size"] == 128
    assert record["validation_images"] == 0 and record["validation_accuracy"] is None  # all images train
    assert record["parameters"] == 784 * 512 + 512 + 512 * 10 + 10
    assert "baseline MLP" in (version_dir / "REPORT.md").read_text()


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_mixed_precision_training_exports_a_float32_graph(tmp_path, data_dir, name):
    # A GPU trains in mixed float16; the served graph must still be float32 for CPU servers.
    # bfloat16 runs on any CPU, so this checks the same conversion here. Tiny cifar10 trains with outlier
    # exposure and the shift head, whose float32 logit the score reads from half-precision features.
    require_data(data_dir, name)
    version_dir = train_and_export(name, profile="tiny", precision="mixed_bfloat16", models_dir=tmp_path,
                                   data_dir=data_dir, limit=500, epochs=1, verbose=0, latency_runs=3)
    record = read_json(version_dir / "assets.extra" / "evaluation.json")
    assert record["precision"] == "mixed_bfloat16"
    assert ("shifted" in record["ood_method"]) == (name == "cifar10")
    _, (x_test, _) = load_data(name, data_dir)
    exported = load_exported_model(tmp_path, name)
    _, scores = exported.predict_with_scores(x_test[:50].astype(np.float32) / 255)
    assert np.all(np.isfinite(scores)) and np.ptp(scores) > 0
    graph = tf.saved_model.load(str(version_dir)).signatures["serving_default"].graph.as_graph_def()
    nodes = [*graph.node, *(node for function in graph.library.function for node in function.node_def)]
    assert any(node.op == "Conv2D" for node in nodes)  # the network's ops are in the functions searched
    half_types = {tf.bfloat16.as_datatype_enum, tf.float16.as_datatype_enum}
    assert [node.name for node in nodes if "T" in node.attr and node.attr["T"].type in half_types] == []
    assert keras.mixed_precision.global_policy().name == "float32"  # the policy is restored afterwards


def test_cli_samples_refuses_a_start_past_the_test_set(tmp_path, data_dir, caplog):
    require_data(data_dir, "mnist")
    with caplog.at_level(logging.ERROR, logger="training"):
        status = main(["samples", "--model", "mnist", "--start", "10000", "--output-dir",
                       str(tmp_path / "out"), "--data-dir", str(data_dir)])
    assert status == 2 and "mnist's test set has 10,000 images" in caplog.text  # was: nothing written, 0
    assert not (tmp_path / "out").exists()
