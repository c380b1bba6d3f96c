"""One model from data to exported version: load, build, train, evaluate, export with its report.

The CLI and the tests call `train_and_export`; evaluation.json and REPORT.md record how the
version was made (recipe, time, hardware) and how well it does on the test set.
"""

import dataclasses
import datetime
import logging
import math
import os
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from serving.model_config import register_model

from . import ood, ood_features
from .datasets import get_spec, load_data, load_exact_test_mask
from .distribute import get_distribution, scale_for_replicas, worker_run_dir
from .export import ExportedModel, check_output_folder, export_model, preprocessing_spec
from .folding import fold_batch_normalization
from .foreign_images import as_served
from .metrics import apply_temperature, classification_metrics, expected_calibration_error, fit_temperature
from .models import (
    BASELINE_BATCH_SIZE,
    BASELINE_EPOCHS,
    build_baseline_mlp,
    build_model,
    with_flip_averaging,
    with_temperature,
)
from .ood_report import evaluate_ood
from .profiles import TrainingSetTooSmallError, get_profile
from .report import count_multiply_adds, write_report
from .shift_head import ShiftHeadTrainer
from .train import predict, preprocess, split_validation, train

ARCHITECTURES = ("cnn", "mlp")
PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")

logger = logging.getLogger(__name__)


def train_and_export(name, *, profile="quick", models_dir="models", data_dir=None, architecture="cnn",
                     limit=None, epochs=None, verbose=1, seed=1337, logs_dir=None, resume=False, data=None,
                     precision="auto", latency_runs=50, ood_images=None, ood_test_images=None,
                     strategy="auto"):
    """Train `name` (a data set in DATASETS) and export it; returns the new version directory.
    `data` (folders.FolderData: a folder of one's own images, read and split) trains model `name` on it.

    `logs_dir` keeps checkpoints, the per-epoch history and TensorBoard logs of the run in
    `logs_dir/<name>-cnn-<profile>/` (or `<name>-mlp/`); `resume` continues its last checkpoint.
    Versions with a validation split get an out-of-distribution score, measured in the report
    against `ood_images` foreign images of each kind and `ood_test_images` test images (default:
    1,000 and all; 100 and 1,000 for the tiny profile, which is for tests).
    `strategy` (distribute.py) trains on several GPUs or workers; only the chief exports, the
    other workers return None.
    """
    distribution = get_distribution(strategy)  # before any other TensorFlow op
    check_output_folder(Path(models_dir) / name, "--models-dir")
    if logs_dir:
        check_output_folder(Path(logs_dir), "--logs-dir")
    if data is None:
        spec = get_spec(name)
        (x_train, y_train), (x_test, y_test) = load_data(name, data_dir)
    else:
        spec, (x_train, y_train), (x_test, y_test) = data.spec, data.train, data.test
    if limit is not None:
        x_train, y_train = x_train[:limit], y_train[:limit]
    precision = choose_precision(precision)
    keras.mixed_precision.set_global_policy(precision)
    keras.utils.set_random_seed(seed)  # before building, so the initial weights repeat too
    trainer = None  # a ShiftHeadTrainer, where the profile trains a shift head
    try:
        if architecture == "cnn":
            settings = get_profile(profile, name) if data is None else data.profile(profile)
            if epochs:
                settings = dataclasses.replace(settings, epochs=epochs)
            settings = scale_for_replicas(settings, distribution.replicas)
            held_out = int(len(x_train) * settings.validation_fraction)  # as train() splits
            if settings.validation_fraction and held_out == 0:
                needed = math.ceil(1 / settings.validation_fraction)
                # A folder read whole cannot grow by --limit: it needs more images.
                remedy = (f"give --limit {needed} or more" if data is None or limit is not None else
                          f"add images to the folder's classes ({needed} or more left after the test split)")
                raise TrainingSetTooSmallError(
                    f"{len(x_train)} training images leave no validation image (profile {profile!r} holds "
                    f"out {settings.validation_fraction:.0%}); {remedy}")
            fit_size = len(x_train) - held_out
            steps_per_epoch = math.ceil(fit_size / settings.batch_size)
            with distribution.strategy.scope():  # variables and optimizer state on every replica
                model = build_model(spec, settings=settings, steps_per_epoch=steps_per_epoch)
                if settings.outlier_exposure and settings.shift_head:
                    trainer = ShiftHeadTrainer(model, settings.shift_head)
            fit_options = {"epochs": settings.epochs, "batch_size": settings.batch_size,
                           "validation_fraction": settings.validation_fraction,
                           "augmentation": settings.augmentation,
                           "outlier_exposure": settings.outlier_exposure,
                           "early_stopping_patience": settings.early_stopping_patience}
        elif architecture == "mlp":
            # The course's recipe exactly: all 60,000 images, a constant RMSprop rate, 5 epochs of 128.
            settings = None
            with distribution.strategy.scope():
                model = build_baseline_mlp(spec)
            fit_options = {"epochs": epochs or BASELINE_EPOCHS,
                           "batch_size": BASELINE_BATCH_SIZE * distribution.replicas,
                           "validation_fraction": 0.0}
        else:
            raise ValueError(f"unknown architecture {architecture!r}; "
                             f"expected one of {', '.join(ARCHITECTURES)}")

        run_name = f"{name}-{architecture}" + (f"-{profile}" if settings else "")
        run_dir = Path(logs_dir) / run_name if logs_dir else None
        resumed = bool(resume and run_dir and (run_dir / "backup" / "training_metadata.json").exists())
        logger.info("training %s (%s, profile %s, %s) on %d images for %d epochs",
                    name, architecture, profile, precision, len(x_train), fit_options["epochs"])
        started, cpu_started = time.perf_counter(), time.process_time()
        with worker_run_dir(distribution, run_dir, resume) as own_run_dir:
            history = train(trainer or model, x_train, y_train, seed=seed, run_dir=own_run_dir, resume=resume,
                            verbose=verbose, **fit_options)
        training_seconds = time.perf_counter() - started
        # On a shared machine the wall clock stretches; CPU time over the cores does not.
        training_cpu_seconds = time.process_time() - cpu_started
    finally:
        keras.mixed_precision.set_global_policy("float32")
    if not distribution.is_chief:
        logger.info("%s: trained as %s of %d workers; the chief exports", name, distribution.task,
                    distribution.workers)
        return None

    serving_model = _serving_model(model, spec, settings, precision, rebuild=distribution.name != "one")
    calibration = {}
    if settings is not None and settings.temperature_scaling and settings.validation_fraction:
        _, (validation_images, validation_labels) = split_validation(
            x_train, y_train, settings.validation_fraction, seed)
        temperature = fit_temperature(predict(serving_model, validation_images), validation_labels)
        serving_model = with_temperature(serving_model, temperature)
        calibration["temperature"] = round(temperature, 4)
    probabilities = predict(serving_model, x_test)
    evaluation = classification_metrics(probabilities, y_test)
    if calibration:
        # Temperature scaling inverts exactly: T' = 1/T gives back the network's own answers.
        uncalibrated = apply_temperature(probabilities, 1 / calibration["temperature"])
        before = expected_calibration_error(uncalibrated, y_test)
        calibration["uncalibrated_expected_calibration_error"] = before
    multiply_adds = count_multiply_adds(serving_model)
    metadata = {
        "dataset": name,
        **(data.summary if data is not None else {}),  # the folder, its classes, splits and skipped files
        "architecture": architecture,
        "profile": profile if architecture == "cnn" else None,  # the baseline has one recipe
        "settings": dataclasses.asdict(settings) if settings else None,
        "augmentation": _describe_augmentation(settings),
        "outlier_exposure": _describe_outlier_exposure(settings),
        "optimizer_description": _describe_optimizer(model.optimizer, settings),
        "flip_test_time": bool(settings and settings.flip_test_time),
        "input_shape": [spec.height, spec.width, spec.channels],
        "epochs": fit_options["epochs"],
        "epochs_run": len(history.get("loss", [])),
        "batch_size": fit_options["batch_size"],  # the global batch: per replica × replicas
        "distribution": distribution.describe(),
        "augmented": bool(settings and settings.augmentation),
        "precision": precision,
        "seed": seed,
        "resumed": resumed,  # the training time then counts from the resume
        "training_images": len(x_train),
        "validation_images": int(len(x_train) * fit_options["validation_fraction"]),
        "training_seconds": round(training_seconds, 1),
        "training_cpu_seconds": round(training_cpu_seconds, 1),
        "cpu_cores": available_cores(),
        "hardware": describe_hardware(),
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__},
        "trained_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "validation_accuracy": max(history["val_accuracy"]) if history.get("val_accuracy") else None,
        "test_accuracy": evaluation["accuracy"],
        "test_images": evaluation["test_images"],
        "per_class_accuracy": dict(zip(spec.classes, evaluation["per_class_accuracy"], strict=True)),
        "expected_calibration_error": evaluation["expected_calibration_error"],
        **calibration,
        "confusion_matrix": evaluation["confusion_matrix"],
        # The trained network's, as before export folded its BatchNormalization away.
        "parameters": int(model.count_params()),
        "multiply_adds_per_image": multiply_adds,
        "flops_per_image": 2 * multiply_adds,
        "history": history,
    }
    exact = load_exact_test_mask(name, data_dir)
    if exact is not None:
        # Most CIFAR-10 copies here were JPEG-decoded; the exact ones are the fair comparison.
        exact_metrics = classification_metrics(probabilities[exact], y_test[exact])
        metadata["exact_test_accuracy"] = exact_metrics["accuracy"]
        metadata["exact_test_images"] = int(exact.sum())

    if profile == "tiny":
        ood_images, ood_test_images = ood_images or 100, ood_test_images or 1000
    elif data is not None:  # a folder's test split holds a few hundred images: 500 of each foreign kind do
        ood_images = ood_images or 500
    ood_score = None
    validation_images = metadata["validation_images"]
    if settings is not None and validation_images < ood.MIN_CALIBRATION_IMAGES:
        logger.warning("%s: %d validation images, fewer than the %d an out-of-distribution threshold is "
                       "calibrated on: exported without a score (answers null); train on more images",
                       name, validation_images, ood.MIN_CALIBRATION_IMAGES)
    elif settings is not None:
        ood_score = fit_ood_score(serving_model, spec, x_train, y_train, settings.validation_fraction, seed,
                                  shift_head=trainer.head_weights() if trainer else None)
        metadata["ood_threshold"] = ood_score.threshold
        metadata["ood_calibration"] = ood_score.calibration
        metadata["ood_method"] = ood.method_name(ood_score.standardization)
    else:  # the course's MLP trains on every image: nothing is left to calibrate a threshold on
        logger.info("%s: no validation split, exported without an out-of-distribution score", name)

    def report(staging, record):
        if ood_score is not None:
            exported = ExportedModel(staging)
            record = {**record, "out_of_distribution": evaluate_ood(
                exported, spec, exported.preprocessing, ood_score.threshold, data_dir=data_dir,
                count=ood_images or 1000, test_count=ood_test_images, seed=FOREIGN_SEED,
                test_set=None if data is None else (x_test, y_test))}
        return write_report(staging, record, probabilities=probabilities, labels=y_test,
                            latency_runs=latency_runs)

    version_dir = export_model(serving_model, name, models_dir, metadata=metadata, add_report=report,
                               ood_score=ood_score, dataset=spec)
    logger.info("%s: test accuracy %.4f after %.0f s of training, exported to %s",
                name, evaluation["accuracy"], training_seconds, version_dir)
    register_model(models_dir, name)  # models.config lists it: a running `make serve` picks it up
    return version_dir


FOREIGN_SEED = 0  # the foreign images of the report, the same as `python -m training evaluate`'s default
# Enough training images to pin down the shared covariance of a few hundred features, in seconds.
OOD_FIT_IMAGES = 20000


def fit_ood_score(serving_model, name, x_train, y_train, validation_fraction, seed, shift_head=None):
    """The out-of-distribution score, fitted on (up to OOD_FIT_IMAGES) training images and calibrated on
    the validation split as the gateway preprocesses it (uploads are what the threshold will meet)."""
    spec = get_spec(name)
    (fit_images, fit_labels), (validation_images, _) = split_validation(x_train, y_train, validation_fraction,
                                                                         seed)
    chosen = np.random.default_rng(seed).permutation(len(fit_images))[:OOD_FIT_IMAGES]
    classifier = ood_features.FeatureClassifier(
        serving_model, stages="stages" in ood.components_for(spec.light_on_dark))
    fit_inputs = preprocess(fit_images[chosen])
    _, features, _ = classifier.predict(fit_inputs)
    score = ood.fit_ood_score(features, fit_labels[chosen], fit_inputs, len(spec.classes),
                              light_on_dark=spec.light_on_dark, shift_head=shift_head)
    validation_inputs = as_served(validation_images, preprocessing_spec(spec))
    _, validation_features, validation_logits = classifier.predict(validation_inputs)
    score = ood.calibrate(score, validation_inputs, validation_features, validation_logits)
    logger.info("%s: out-of-distribution threshold %.4g, %s", spec.name, score.threshold, score.calibration)
    return score


def choose_precision(precision="auto"):
    """`auto`: float16 mixed precision where a GPU is present, float32 elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        return "mixed_float16" if tf.config.list_physical_devices("GPU") else "float32"
    return precision


def _serving_model(model, name, settings, precision, rebuild=False):
    """The exported network: float32 throughout (whatever precision trained it), BatchNormalization
    folded into the convolutions, and for profiles that say so, averaged over the image and its mirror
    image. `rebuild`: a copy outside the strategy that trained it, so that predicting and exporting need
    no other worker."""
    if precision != "float32" or rebuild:
        # A half-precision graph would run slowly, or not at all, on the CPUs that serve it.
        trained = model
        model = build_model(name, settings=settings) if settings is not None else build_baseline_mlp(name)
        model.set_weights(trained.get_weights())
    if settings is None:  # the course's MLP has no BatchNormalization
        return model
    # Fewer ops per call in both servers (docs/benchmarks.md, issue 32).
    model = fold_batch_normalization(model)
    return with_flip_averaging(model) if settings.flip_test_time else model


def _describe_augmentation(settings):
    augmentation = settings.augmentation if settings else None
    if augmentation is None:
        return None
    parts = []
    if augmentation.shift:
        padding = "reflection" if augmentation.reflect else "black"
        parts.append(f"random crops shifted up to {augmentation.shift} px ({padding} padding)")
    if augmentation.flip:
        parts.append("horizontal flips")
    if augmentation.rotation:
        parts.append(f"rotations up to {augmentation.rotation:g}°")
    if augmentation.zoom:
        parts.append(f"zoom ±{augmentation.zoom:.0%}")
    if augmentation.cutout:
        parts.append(f"cutout {augmentation.cutout}x{augmentation.cutout} px on half the images")
    return ", ".join(parts)


def _describe_outlier_exposure(settings):
    if not (settings and settings.outlier_exposure):
        return None
    return (f"turned and channel-swapped copies of half of each batch, trained towards the uniform answer "
            f"with their mean loss weighing {settings.outlier_exposure:g} of the images'"
            + (f"; a shift head told them from the images, its loss weighing {settings.shift_head:g}"
               if settings.shift_head else ""))


def _describe_optimizer(optimizer, settings):
    name = type(optimizer).__name__
    if settings is None:
        return f"{name}, constant learning rate {float(optimizer.learning_rate):g}"
    parts = [f"{name}{' (Nesterov momentum 0.9)' if settings.optimizer == 'sgd' else ''}",
             f"{settings.schedule.replace('_', '-')} schedule, peak learning rate {settings.learning_rate:g}"]
    if settings.weight_decay:
        parts.append(f"weight decay {settings.weight_decay:g}")
    if settings.label_smoothing:
        parts.append(f"label smoothing {settings.label_smoothing:g}")
    if settings.early_stopping_patience:
        parts.append(f"early stopping after {settings.early_stopping_patience} epochs without progress")
    return ", ".join(parts)


def available_cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def describe_hardware():
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            cpu = next(line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    cores = available_cores()
    gpus = [tf.config.experimental.get_device_details(device).get("device_name", device.name)
            for device in tf.config.list_physical_devices("GPU")]
    return f"{cpu}, {cores} CPU cores, " + (f"GPUs: {', '.join(gpus)}" if gpus else "no GPU")
