"""Resuming an interrupted training run from its checkpoint (`--resume`), and refusing one that does
not fit the run."""

import json
import logging
import re

import keras
import numpy as np
import pytest

from tests.conftest import require_data
from training.__main__ import main
from training.models import build_model
from training.shift_head import ShiftHeadTrainer
from training.train import CHECKPOINT_FILE, CheckpointMismatchError, train


class StopAfterFirstEpoch(keras.callbacks.Callback):
    def on_epoch_begin(self, epoch, logs=None):
        if epoch == 1:
            raise KeyboardInterrupt("interrupted")


@pytest.mark.parametrize(("name", "shape", "outlier_exposure"),
                         [("mnist", (28, 28, 1), 0.0), ("cifar10", (32, 32, 3), 0.25)])
def test_resume_continues_from_the_last_checkpoint(tmp_path, name, shape, outlier_exposure):
    """Also with outlier exposure: weighted (image, label, weight) batches, the accuracy that counts
    only the images with a class and the shift head beside the classifier (tiny cifar10 has both) go
    through the checkpoint and back."""
    images = np.random.default_rng(0).integers(0, 256, (80, *shape), dtype=np.uint8)
    labels = np.arange(80) % 10

    def new_model():
        model = build_model(name, profile="tiny", steps_per_epoch=3)
        return ShiftHeadTrainer(model, 1.0) if outlier_exposure else model

    model = new_model()
    options = {"epochs": 3, "batch_size": 24, "validation_fraction": 0.1, "run_dir": tmp_path, "verbose": 0,
               "outlier_exposure": outlier_exposure}
    with pytest.raises(KeyboardInterrupt):
        train(model, images, labels, callbacks=[StopAfterFirstEpoch()], **options)
    assert json.loads((tmp_path / "backup" / "training_metadata.json").read_text())["epoch"] == 1
    saved = [weights.copy() for weights in model.get_weights()]

    fresh = new_model()  # a new process would start like this
    resumed = []
    # The first epoch begins after BackupAndRestore has loaded the checkpoint.
    first_epoch = keras.callbacks.LambdaCallback(
        on_epoch_begin=lambda epoch, logs: resumed or resumed.extend(fresh.get_weights()))
    history = train(fresh, images, labels, resume=True, callbacks=[first_epoch], **options)
    for before, after in zip(saved, resumed, strict=True):  # training went on from the checkpoint ...
        np.testing.assert_array_equal(before, after)
    assert int(fresh.optimizer.iterations) == 3 * 3  # ... with its optimizer state (hence the schedule)
    assert len(history["loss"]) == 3  # the history file holds the epochs from before the interruption too
    assert all(0 <= accuracy <= 1 for accuracy in history["accuracy"] + history["val_accuracy"])
    assert not (tmp_path / "backup").exists()  # a finished run leaves no checkpoint to resume
    assert (tmp_path / "best.weights.h5").is_file()


def test_resume_refuses_a_checkpoint_of_another_network(tmp_path, data_dir, caplog):
    """A run checkpointed before its recipe changed (here: cifar10 before the shift head) is refused with
    a message that says so, before Keras fails half-way through loading it; the checkpoint is kept."""
    require_data(data_dir, "cifar10")
    run_dir = tmp_path / "logs" / "cifar10-cnn-tiny"
    images = np.random.default_rng(0).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    with pytest.raises(KeyboardInterrupt):
        train(build_model("cifar10", profile="tiny", steps_per_epoch=2), images, np.arange(40) % 10, epochs=2,
              batch_size=20, validation_fraction=0.0, run_dir=run_dir, verbose=0,
              callbacks=[StopAfterFirstEpoch()])
    arguments = ["train", "--model", "cifar10", "--profile", "tiny", "--limit", "200", "--resume",
                 "--data-dir", str(data_dir), "--models-dir", str(tmp_path / "models"),
                 "--logs-dir", str(tmp_path / "logs")]
    with caplog.at_level(logging.ERROR):
        assert main(arguments) == 2
    assert re.search(r"checkpoint in .*cifar10-cnn-tiny.* belongs to another network .*\(1,\).*Run without "
                     r"--resume", caplog.text)
    assert (run_dir / "backup" / CHECKPOINT_FILE).is_file() and not (tmp_path / "models").exists()


def test_resume_refuses_a_checkpoint_trained_in_another_precision(tmp_path):
    """Keras would load its weights and drop the optimizer state of another shape (loss scaling) with a
    warning, restarting the schedule; the run says what changed instead."""
    images = np.random.default_rng(0).integers(0, 256, (40, 28, 28, 1), dtype=np.uint8)
    options = {"epochs": 2, "batch_size": 20, "validation_fraction": 0.0, "run_dir": tmp_path, "verbose": 0}
    with pytest.raises(KeyboardInterrupt):
        train(build_model("mnist", profile="tiny", steps_per_epoch=2), images, np.arange(40) % 10,
              callbacks=[StopAfterFirstEpoch()], **options)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        with pytest.raises(CheckpointMismatchError, match="precision float32 there, mixed_bfloat16 here"):
            train(build_model("mnist", profile="tiny", steps_per_epoch=2), images, np.arange(40) % 10,
                  resume=True, **options)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    resumed = build_model("mnist", profile="tiny", steps_per_epoch=2)  # as it was trained: it goes on
    assert len(train(resumed, images, np.arange(40) % 10, resume=True, **options)["loss"]) == 2
    assert int(resumed.optimizer.iterations) == 2 * 2


@pytest.mark.parametrize(("change", "message"), [
    ({"images": 30}, r"images 40:\w+ there, 30:\w+ here"),  # --limit, or a folder that lost images
    ({"shuffled": True}, r"images 40:\w+ there, 40:\w+ here"),  # as many images, others
    ({"epochs": 3}, "epochs 2 there, 3 here"),  # the schedule is sized in steps for the whole run
])
def test_resume_refuses_other_images_or_another_length(tmp_path, change, message):
    """Images trained on before the interruption would otherwise land in the validation split, which
    early stopping, the temperature and the out-of-distribution threshold are fitted on."""
    images = np.random.default_rng(0).integers(0, 256, (40, 28, 28, 1), dtype=np.uint8)
    options = {"batch_size": 20, "validation_fraction": 0.1, "run_dir": tmp_path, "verbose": 0}
    with pytest.raises(KeyboardInterrupt):
        train(build_model("mnist", profile="tiny", steps_per_epoch=2), images, np.arange(40) % 10, epochs=2,
              callbacks=[StopAfterFirstEpoch()], **options)
    if change.get("shuffled"):
        images = images[::-1]
    images = images[:change.get("images", 40)]
    with pytest.raises(CheckpointMismatchError, match=message):
        train(build_model("mnist", profile="tiny", steps_per_epoch=2), images, np.arange(len(images)) % 10,
              epochs=change.get("epochs", 2), resume=True, **options)


def test_without_resume_a_run_starts_over(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (40, 28, 28, 1), dtype=np.uint8)
    model = build_model("mnist", profile="tiny", steps_per_epoch=2)
    options = {"epochs": 2, "batch_size": 20, "validation_fraction": 0.0, "run_dir": tmp_path, "verbose": 0}
    with pytest.raises(KeyboardInterrupt):
        train(model, images, np.arange(40) % 10, callbacks=[StopAfterFirstEpoch()], **options)
    fresh = build_model("mnist", profile="tiny", steps_per_epoch=2)
    history = train(fresh, images, np.arange(40) % 10, **options)
    assert len(history["loss"]) == 2 and int(fresh.optimizer.iterations) == 2 * 2


def test_cli_resume_without_a_checkpoint_starts_from_the_first_epoch(tmp_path, data_dir, caplog):
    require_data(data_dir, "mnist")
    arguments = ["train", "--model", "mnist", "--profile", "tiny", "--limit", "300", "--epochs", "1",
                 "--models-dir", str(tmp_path / "models"), "--data-dir", str(data_dir),
                 "--logs-dir", str(tmp_path / "logs"), "--resume"]
    assert main(arguments) == 0
    assert "no checkpoint" in caplog.text
    record = json.loads((tmp_path / "models" / "mnist" / "1" / "assets.extra" / "evaluation.json").read_text(
        encoding="utf-8"))
    assert record["resumed"] is False and record["epochs_run"] == 1
    assert (tmp_path / "logs" / "mnist-cnn-tiny" / "history.jsonl").read_text().count("\n") == 1
