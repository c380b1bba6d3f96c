"""The report inside each exported version: pictures in `assets.extra/` (confusion matrix,
training curves, reliability diagram) and `REPORT.md` beside `saved_model.pb`, plus the
serving costs measured on the exported graph itself (batch-1 latency, size on disk).
"""

import logging
import statistics
import time
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf
from matplotlib.colors import PowerNorm
from matplotlib.figure import Figure  # the object API renders with Agg and keeps no global state
from matplotlib.ticker import MaxNLocator

from .metrics import calibration_bins

CONFUSION_MATRIX = "confusion_matrix.png"
TRAINING_CURVES = "training_curves.png"
RELIABILITY = "reliability.png"

logger = logging.getLogger(__name__)


def count_multiply_adds(model):
    """Multiply-adds per image of the convolutions and dense layers (the rest costs far less)."""
    from .models import FlipAveraging

    total = 0
    for layer in model.layers:
        if isinstance(layer, FlipAveraging):
            total += 2 * count_multiply_adds(layer.model)
        elif isinstance(layer, keras.Model):
            total += count_multiply_adds(layer)
        elif isinstance(layer, keras.layers.Conv2D):  # includes DepthwiseConv2D's parent class
            height, width, filters = layer.output.shape[1:]
            kernel_height, kernel_width, inputs_per_group = layer.kernel.shape[:3]
            total += height * width * filters * kernel_height * kernel_width * inputs_per_group
        elif isinstance(layer, keras.layers.Dense):
            total += int(np.prod(layer.kernel.shape))
    return int(total)


def measure_latency(version_dir, input_shape, *, runs=50, warmup=5):
    """Batch-1 latency of the exported signature in ms: median and 90th percentile."""
    signature = tf.saved_model.load(str(version_dir)).signatures["serving_default"]
    image = tf.constant(np.random.default_rng(0).random((1, *input_shape), dtype=np.float32))
    for _ in range(warmup):
        signature(images=image)
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        signature(images=image)
        timings.append((time.perf_counter() - started) * 1000)
    return {"median_ms": round(statistics.median(timings), 3),
            "p90_ms": round(float(np.percentile(timings, 90)), 3), "runs": runs}


def directory_size(folder):
    return sum(path.stat().st_size for path in Path(folder).rglob("*") if path.is_file())


def plot_confusion_matrix(matrix, classes, path, title):
    matrix = np.asarray(matrix)
    shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    figure = Figure(figsize=(7.5, 6.5), layout="constrained")
    axes = figure.add_subplot()
    # A power scale so that the few-percent confusions stand out next to the diagonal.
    image = axes.imshow(shares, cmap="Blues", norm=PowerNorm(gamma=0.4, vmin=0, vmax=1))
    for row in range(len(classes)):
        for column in range(len(classes)):
            count = matrix[row, column]
            if count:
                color = "white" if shares[row, column] > 0.5 else "black"
                axes.text(column, row, str(count), ha="center", va="center", fontsize=8, color=color)
    axes.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    axes.set_yticks(range(len(classes)), classes)
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(title)
    figure.colorbar(image, ax=axes, label="share of the true class")
    figure.savefig(path, dpi=100)


def plot_training_curves(history, path, title, training_label="training", test_accuracy=None):
    """Loss, accuracy (with the exported model's test accuracy for reference) and learning rate per epoch."""
    figure = Figure(figsize=(14, 4), layout="constrained")
    loss_axes, accuracy_axes, rate_axes = figure.subplots(1, 3, width_ratios=[3, 3, 2])
    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    for axes, metric in ((loss_axes, "loss"), (accuracy_axes, "accuracy")):
        if history.get(metric):
            axes.plot(epochs, history[metric], marker="o", markersize=3, label=training_label)
        if history.get(f"val_{metric}"):
            axes.plot(epochs, history[f"val_{metric}"], marker="o", markersize=3, label="validation")
        axes.set_ylabel(metric)
    if test_accuracy is not None:
        accuracy_axes.axhline(test_accuracy, color="tab:green", linestyle="--",
                              label=f"test, exported model: {test_accuracy:.2%}")
    accuracy_axes.set_ylim(top=1.0)
    if history.get("learning_rate"):
        rate_axes.plot(epochs, history["learning_rate"], color="grey", marker="o", markersize=3)
        rate_axes.set_ylim(bottom=0)
    rate_axes.set_ylabel("learning rate at the end of the epoch")
    for axes in (loss_axes, accuracy_axes, rate_axes):
        axes.set_xlabel("epoch")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.grid(alpha=0.3)
    for axes in (loss_axes, accuracy_axes):
        axes.legend()
    figure.suptitle(title)
    figure.savefig(path, dpi=100)


def plot_reliability(probabilities, labels, path, title):
    counts, confidence, accuracy = calibration_bins(np.asarray(probabilities), np.asarray(labels))
    edges = np.linspace(0, 1, len(counts) + 1)
    filled = counts > 0
    figure = Figure(figsize=(5, 5), layout="constrained")
    axes = figure.add_subplot()
    axes.bar(edges[:-1][filled], accuracy[filled], width=1 / len(counts), align="edge", edgecolor="black",
             label="accuracy in the bin")
    axes.plot([0, 1], [0, 1], color="grey", linestyle="--", label="perfect calibration")
    axes.plot(confidence[filled], accuracy[filled], "o", color="tab:red", markersize=4,
              label="(mean confidence, accuracy)")
    axes.set_xlabel("confidence of the top class")
    axes.set_ylabel("accuracy")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.legend(loc="upper left")
    axes.set_title(title)
    figure.savefig(path, dpi=100)


def write_report(version_dir, record, *, probabilities, labels, latency_runs=50):
    """Measure the exported version, draw its pictures and write REPORT.md; returns the record
    with the measurements added (for evaluation.json)."""
    version_dir = Path(version_dir)
    extra = version_dir / "assets.extra"
    extra.mkdir(exist_ok=True)
    classes = list(record["per_class_accuracy"])
    input_shape = tuple(record["input_shape"])
    record = {
        **record,
        "size_bytes": directory_size(version_dir),
        "batch1_latency": measure_latency(version_dir, input_shape, runs=latency_runs),
    }
    title = f"{record['model']} ({record['architecture']}, {record.get('profile') or 'baseline'})"
    plot_confusion_matrix(record["confusion_matrix"], classes, extra / CONFUSION_MATRIX,
                          f"{title}: test set, {record['test_images']} images")
    training_label = "training (augmented images)" if record.get("augmented") else "training"
    plot_training_curves(record["history"], extra / TRAINING_CURVES, f"{title}: training", training_label,
                         record["test_accuracy"])
    plot_reliability(probabilities, labels, extra / RELIABILITY,
                     f"calibration: ECE {record['expected_calibration_error']:.4f}")
    (version_dir / "REPORT.md").write_text(render_markdown(record))
    return record


def _percent(value):
    return "n/a" if value is None else f"{value:.2%}"


def render_markdown(record):
    """The report of the version whose folder holds it (the folder's name is the version)."""
    classes = list(record["per_class_accuracy"])
    matrix = np.asarray(record["confusion_matrix"])
    architecture = "baseline MLP" if record["architecture"] == "mlp" else "CNN"
    lines = [
        f"# {record['model']}: evaluation report",
        "",
        f"{architecture}, profile `{record.get('profile') or 'none (the course recipe)'}`, "
        f"trained {record['trained_at']}.",
        "",
        "| | |",
        "| --- | --- |",
        f"| test accuracy | **{_percent(record['test_accuracy'])}** "
        f"on {record['test_images']:,} test images |",
    ]
    if "exact_test_accuracy" in record:
        lines.append(f"| test accuracy, exact-pixel images | {_percent(record['exact_test_accuracy'])} on "
                     f"{record['exact_test_images']:,} images (the rest of this copy was JPEG-decoded) |")
    latency = record["batch1_latency"]
    flip = " (twice the network: the image and its mirror image)" if record.get("flip_test_time") else ""
    if record.get("validation_accuracy") is not None:
        lines.append(f"| validation accuracy | {_percent(record['validation_accuracy'])} (best epoch, "
                     f"{record['validation_images']:,} images held out of the training set) |")
    lines += [
        f"| expected calibration error | {record['expected_calibration_error']:.4f} "
        f"(15 equal-width confidence bins){_calibration_note(record)} |",
        f"| parameters | {record['parameters']:,} |",
        f"| FLOPs per image | {record['flops_per_image'] / 1e6:,.1f} M "
        f"({record['multiply_adds_per_image'] / 1e6:,.1f} M multiply-adds){flip} |",
        f"| batch-1 latency | {latency['median_ms']:.2f} ms median, {latency['p90_ms']:.2f} ms p90 "
        f"(exported signature, {latency['runs']} runs on the training machine, "
        "which other jobs may share) |",
        f"| size on disk | {record['size_bytes'] / 1e6:.1f} MB |",
        f"| training | {record['epochs_run']} of {record['epochs']} epochs, batch {record['batch_size']}, "
        f"{_duration(record['training_seconds'])}{' since the resume' if record.get('resumed') else ''} "
        f"on {record['hardware']}{_cpu_time(record)} |",
        f"| augmentation | {record.get('augmentation') or 'none'} |",
        f"| outlier exposure | {record.get('outlier_exposure') or 'none'} |",
        f"| optimizer | {record.get('optimizer_description', 'n/a')} |",
        f"| software | TensorFlow {record['versions']['tensorflow']}, Keras {record['versions']['keras']}, "
        f"precision {record.get('precision', 'float32')}, seed {record['seed']} |",
        "",
        "## Per-class accuracy",
        "",
        "| class | accuracy | most often taken for |",
        "| --- | --- | --- |",
    ]
    for index, name in enumerate(classes):
        row = matrix[index].copy()
        row[index] = 0
        confused = f"{classes[int(row.argmax())]} ({int(row.max())})" if row.max() else "-"
        lines.append(f"| {name} | {_percent(record['per_class_accuracy'][name])} | {confused} |")
    lines += [
        "",
        *out_of_distribution_section(record),
        "## Confusion matrix",
        "",
        f"![confusion matrix](assets.extra/{CONFUSION_MATRIX})",
        "",
        "## Training curves",
        "",
        *_training_curves_note(record),
        f"![training curves](assets.extra/{TRAINING_CURVES})",
        "",
        "## Calibration",
        "",
        f"![reliability diagram](assets.extra/{RELIABILITY})",
        "",
        "All figures are in `assets.extra/evaluation.json`.",
        "",
    ]
    return "\n".join(lines)


def out_of_distribution_section(record):
    from .ood_report import render_table

    result = record.get("out_of_distribution")
    if not result:
        return []
    calibration = record.get("ood_calibration") or {}
    method = record.get("ood_method") or ""
    # Fisher's method reads each image among the others; a lone component is only standardized.
    among = ", each scored against the others" if method.startswith("fisher") else ""
    return [
        "## Out-of-distribution score",
        "",
        f"`ood_score` ({method}); an image is flagged above {result['threshold']:.4g}, the threshold that "
        f"flagged {calibration.get('in_distribution_flag_rate', float('nan')):.2%} of the "
        f"{calibration.get('images', 0):,} {calibration.get('split', 'validation')} images{among} "
        "(target 5 %). "
        "Foreign images of each kind: "
        f"{next(iter(result['kinds'].values()))['images']:,}, made by training/foreign_images.py (seed "
        f"{result['seed']}).",
        "",
        *render_table(result),
        "",
    ]


def _calibration_note(record):
    if "temperature" not in record:
        return ""
    return (f"; probabilities rescaled by temperature {record['temperature']:.3g}, fitted on the validation "
            f"split; {record['uncalibrated_expected_calibration_error']:.4f} without")


def _training_curves_note(record):
    settings = record.get("settings") or {}
    if not (record.get("augmented") or settings.get("label_smoothing") or settings.get("dropout")):
        return []
    return ["Training figures come from augmented images, with dropout and label smoothing where the "
            "profile uses them, so they can sit below the validation figures.", ""]


def _cpu_time(record):
    """Where other jobs shared the machine, CPU time / cores is what the run would take alone."""
    measured = record.get("training_cpu_seconds") and record.get("cpu_cores")
    if not measured or "no GPU" not in record["hardware"]:
        return ""
    return (f"; {_duration(record['training_cpu_seconds'])} of CPU time, "
            f"{_duration(record['training_cpu_seconds'] / record['cpu_cores'])} on "
            f"{record['cpu_cores']} cores alone")


def _duration(seconds):
    minutes, seconds = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    if hours:
        return f"{hours} h {minutes} min"
    return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"
