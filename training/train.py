"""Training and evaluation: fit a compiled model on uint8 images, then measure it on the test set.

Pixels are scaled by 1/255 here and nowhere else in training, the same scaling the
exported model's `preprocessing.json` tells the gateway to apply.
"""

import hashlib
import json
import logging
import shutil
import time
from collections import Counter
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from .augmentation import augment_batch
from .distribute import with_data_sharding
from .metrics import classification_metrics
from .outliers import with_outliers

PIXEL_SCALE = 255.0

logger = logging.getLogger(__name__)


def preprocess(images):
    if images.dtype != np.uint8:
        raise ValueError(f"expected uint8 pixel images, got {images.dtype}")
    return images.astype(np.float32) / PIXEL_SCALE


def split_validation(images, labels, fraction, seed):
    """A shuffled (fit, validation) split of the training set; the test set is never touched."""
    if not 0 <= fraction < 1:
        raise ValueError(f"validation_fraction must be in [0, 1), got {fraction}")
    order = np.random.default_rng(seed).permutation(len(images))
    size = int(len(images) * fraction)
    return (images[order[size:]], labels[order[size:]]), (images[order[:size]], labels[order[:size]])


def training_dataset(images, labels, *, batch_size, num_classes, seed, augmentation=None,
                     outlier_exposure=0.0):
    """Shuffled batches of (float32 images, one-hot labels), augmented batch by batch; with
    `outlier_exposure`, (images, labels, sample weights) with shifted copies as outliers (outliers.py).

    The map runs sequentially: the generator's draws then follow the batch order, so a
    seed repeats the run, and on two cores the training step has the cores anyway.
    """
    generator = tf.random.Generator.from_seed(seed)

    def prepare(batch_images, batch_labels):
        batch_images = tf.cast(batch_images, tf.float32) / PIXEL_SCALE
        if augmentation is not None:
            batch_images = augment_batch(batch_images, augmentation, generator)
        one_hot = tf.one_hot(batch_labels, num_classes)
        if outlier_exposure:
            return with_outliers(batch_images, one_hot, outlier_exposure, generator)
        return batch_images, one_hot

    return (
        tf.data.Dataset.from_tensor_slices((images, labels))
        .shuffle(len(images), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        .map(prepare)
        .prefetch(tf.data.AUTOTUNE)
    )


def train(model, x_train, y_train, *, epochs, batch_size, validation_fraction=0.1, seed=1337,
          augmentation=None, outlier_exposure=0.0, early_stopping_patience=0, run_dir=None, resume=False,
          callbacks=(), verbose=1):
    """Fit on a shuffled training split, watching the held-out rest; returns the per-epoch history.

    With `run_dir`, each epoch leaves a checkpoint (model and optimizer state) there, the
    best validation weights, a JSON-lines history and TensorBoard logs; `resume=True` continues
    from the last checkpoint instead of starting over. `augmentation` (an
    `augmentation.Augmentation`) runs in the input pipeline, so the exported graph holds
    no random ops; so do the shifted copies that `outlier_exposure` (their loss's weight; 0:
    none) adds as outliers (outliers.py).
    """
    keras.utils.set_random_seed(seed)
    num_classes = model.output_shape[-1]
    (fit_images, fit_labels), (validation_images, validation_labels) = split_validation(
        x_train, y_train, validation_fraction, seed)
    validation_data = None
    if len(validation_images):
        one_hot = np.eye(num_classes, dtype=np.float32)[validation_labels]
        validation_data = (preprocess(validation_images), one_hot)
    dataset = training_dataset(fit_images, fit_labels, batch_size=batch_size, num_classes=num_classes,
                               seed=seed, augmentation=augmentation, outlier_exposure=outlier_exposure)
    # Under a multi-worker strategy each worker keeps its share of every (global) batch; the same
    # seed gives every worker the same shuffled order.
    dataset = with_data_sharding(dataset)
    callbacks = [EpochLogger(), *callbacks]
    if early_stopping_patience and validation_data is not None:
        callbacks.append(keras.callbacks.EarlyStopping(
            monitor="val_accuracy", patience=early_stopping_patience, restore_best_weights=True))
    if run_dir is not None:  # after EpochLogger, so the history and TensorBoard logs carry the rate
        # What a checkpoint's optimizer state and schedule depend on besides the weights, and the images it
        # trained on (other images, and the validation split would hold some it has seen).
        setup = {"precision": keras.mixed_precision.global_policy().name, "batch_size": batch_size,
                 "epochs": epochs, "images": _fingerprint(x_train, y_train, validation_fraction)}
        if resume:
            check_checkpoint(model, Path(run_dir), setup)
        callbacks += _checkpoint_callbacks(Path(run_dir), resume, validation_data is not None, setup)
    result = model.fit(dataset, epochs=epochs, validation_data=validation_data, callbacks=callbacks,
                       shuffle=False, verbose=verbose)  # the dataset shuffles itself
    if run_dir is not None:
        best = Path(run_dir) / BEST_WEIGHTS_FILE
        if resume and early_stopping_patience and validation_data is not None and best.exists():
            # EarlyStopping restored the best epoch since the resume; the checkpoint holds the best of all.
            model.load_weights(str(best))
        return read_history(Path(run_dir) / HISTORY_FILE)  # all epochs, including those before a resume
    return {key: [float(value) for value in values] for key, values in result.history.items()}


HISTORY_FILE = "history.jsonl"
BEST_WEIGHTS_FILE = "best.weights.h5"
CHECKPOINT_FILE = "latest.weights.h5"  # keras.callbacks.BackupAndRestore's, in run_dir/backup
SETUP_FILE = "setup.json"  # the precision, global batch, epochs and images the run's checkpoints are of


class CheckpointMismatchError(ValueError):
    """--resume found a checkpoint of another network: other classes, layers or recipe."""


def check_checkpoint(model, run_dir, setup):
    """Refuse to resume from a checkpoint that does not fit this run, with a message that says what
    differs, before Keras fails half-way through loading it, or loads the weights but silently drops
    an optimizer state of another shape (another precision's loss scaling) and restarts the schedule.
    The file holds the weights by layer index, not by name, so their shapes are compared as a multiset:
    a folder with another number of classes, another profile's or architecture's network, or one from
    before a change of the recipe."""
    path = run_dir / "backup" / CHECKPOINT_FILE
    if not path.exists():
        return
    import h5py  # Keras' own dependency for .weights.h5

    saved = []
    with h5py.File(path, "r") as checkpoint:
        checkpoint.visititems(lambda name, item: saved.append(tuple(item.shape)) if isinstance(
            item, h5py.Dataset) and "optimizer" not in name.split("/") else None)
    wanted = Counter(tuple(weight.shape) for weight in model.weights)
    missing, extra = Counter(saved) - wanted, wanted - Counter(saved)
    if missing or extra:
        def shapes(counter):
            return ", ".join(f"{shape}" for shape in sorted(counter.elements())[:4]) or "none"

        raise CheckpointMismatchError(
            f"--resume: the checkpoint in {path.parent} belongs to another network ({len(saved)} weights; "
            f"shapes {shapes(missing)} there are not in this run's, {shapes(extra)} here are not in the "
            "checkpoint's): the classes, the profile or the recipe changed since it was written. Run "
            "without --resume to start over (it deletes that checkpoint), or give another --logs-dir")
    written = run_dir / SETUP_FILE
    before = json.loads(written.read_text()) if written.exists() else {}
    # A run from before the file, or a key a file from before it lacks, is not checked.
    changed = [f"{key} {before[key]} there, {value} here" for key, value in setup.items()
               if before.get(key, value) != value]
    if changed:
        raise CheckpointMismatchError(
            f"--resume: the checkpoint in {path.parent} was trained with another setup "
            f"({'; '.join(changed)}; the batch is per replica times replicas, the images are the training "
            "split's count and digest). Resume with the --precision, --strategy, --epochs, --limit and data "
            "it was trained with, or run without --resume to start over")


def _fingerprint(images, labels, validation_fraction):
    """The training images' count and a digest of them, their labels and the validation share."""
    digest = hashlib.blake2b(np.float64(validation_fraction).tobytes(), digest_size=6)
    for array in (images, labels):
        digest.update(np.ascontiguousarray(array))  # no copy where it is contiguous already
    return f"{len(images)}:{digest.hexdigest()}"


def _checkpoint_callbacks(run_dir, resume, validating, setup):
    backup = run_dir / "backup"
    history = run_dir / HISTORY_FILE
    run_dir.mkdir(parents=True, exist_ok=True)
    best_so_far = None  # the best val_accuracy of the epochs before a resume
    if not (resume and (backup / "training_metadata.json").exists()):
        (run_dir / SETUP_FILE).write_text(json.dumps(setup) + "\n")  # a new run: its checkpoints' setup
    if not resume:
        shutil.rmtree(backup, ignore_errors=True)
        history.unlink(missing_ok=True)
    elif (backup / "training_metadata.json").exists():
        epochs_done = json.loads((backup / "training_metadata.json").read_text())["epoch"]
        logger.info("resuming after epoch %d from the checkpoint in %s", epochs_done, backup)
        # An epoch logged after the last checkpoint runs again: forget its line.
        lines = history.read_text().splitlines(keepends=True) if history.exists() else []
        history.write_text("".join(lines[:epochs_done]))
        earlier = [json.loads(line).get("val_accuracy") for line in lines[:epochs_done]]
        earlier = [value for value in earlier if value is not None]
        best_so_far = max(earlier) if earlier else None
    else:
        logger.warning("resume: no checkpoint in %s, starting from the first epoch", backup)
        history.unlink(missing_ok=True)
    callbacks = [
        HistoryFile(history),
        # Model and optimizer state (hence the schedule's step) after every epoch; deleted
        # once training completes.
        keras.callbacks.BackupAndRestore(str(backup)),
        keras.callbacks.TensorBoard(str(run_dir / "tensorboard"), update_freq="epoch"),
    ]
    if validating:
        # Resumed, it overwrites the best epoch's weights only with better ones.
        best = keras.callbacks.ModelCheckpoint(str(run_dir / BEST_WEIGHTS_FILE), monitor="val_accuracy",
                                               save_best_only=True, save_weights_only=True,
                                               initial_value_threshold=best_so_far)
        callbacks.append(best)
    return callbacks


class EpochLogger(keras.callbacks.Callback):
    """Adds the optimizer's current learning rate and the epoch's wall-clock and CPU seconds
    to each epoch's logs: on a shared machine, the CPU time says what the epoch costs."""

    def on_epoch_begin(self, epoch, logs=None):
        self.started = (time.perf_counter(), time.process_time())

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))
            logs["epoch_seconds"] = time.perf_counter() - self.started[0]
            logs["epoch_cpu_seconds"] = time.process_time() - self.started[1]


class HistoryFile(keras.callbacks.Callback):
    """Appends each epoch's logs to a JSON-lines file, opened and closed per epoch, so that a
    killed run leaves a complete file behind for the resumed one to continue."""

    def __init__(self, path):
        super().__init__()
        self.path = Path(path)

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch + 1, **{key: float(value) for key, value in (logs or {}).items()}}
        with open(self.path, "a") as file:
            file.write(json.dumps(row) + "\n")


def read_history(path):
    """The history file as {metric: [value per epoch]}, like keras' History."""
    path = Path(path)
    lines = path.read_text().splitlines() if path.exists() else []
    rows = [json.loads(line) for line in lines if line.strip()]
    keys = dict.fromkeys(key for row in rows for key in row if key != "epoch")
    return {key: [row.get(key) for row in rows] for key in keys}


def predict(model, images, *, batch_size=500):
    """Probabilities for uint8 images; `model` is anything with keras' `predict`."""
    return np.asarray(model.predict(preprocess(images), batch_size=batch_size, verbose=0))


def evaluate(model, x_test, y_test, *, batch_size=500):
    """Accuracy over all test images and per class, calibration and the confusion matrix."""
    return classification_metrics(predict(model, x_test, batch_size=batch_size), y_test)
