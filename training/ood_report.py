"""How well an exported version's `ood_score` tells foreign images from its test set, next to the
max-softmax baseline (Hendrycks & Gimpel 2017) computed from the same answers: AUROC, the share of
foreign images let through where 95 % of test images pass (FPR95) and the detection rate at the
version's calibrated threshold. Every image goes through the gateway's preprocessing first.
"""

import numpy as np

from .datasets import load_data
from .foreign_images import as_served, foreign_image_sets


def auroc(inside, outside):
    """Probability that a foreign image scores higher than an in-distribution one (ties count half)."""
    inside, outside = np.asarray(inside, np.float64), np.asarray(outside, np.float64)
    scores = np.concatenate([inside, outside])
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    ranks = (np.cumsum(counts) - (counts - 1) / 2)[inverse]  # average rank of each tie group, from 1
    foreign = len(outside)
    return float((ranks[len(inside):].sum() - foreign * (foreign + 1) / 2) / (len(inside) * foreign))


def fpr_at_95_tpr(inside, outside):
    """Share of foreign images scoring no higher than the 95th percentile of in-distribution ones: the
    false-positive rate at 95 % true-positive rate, in-distribution images being the positives."""
    return float(np.mean(np.asarray(outside) <= np.quantile(inside, 0.95)))


def compare_scores(inside_scores, outside_scores, inside_probabilities, outside_probabilities, threshold):
    """One row: the score's and the baseline's AUROC and FPR95, and the detection rate at the threshold."""
    baseline_inside, baseline_outside = -inside_probabilities.max(axis=1), -outside_probabilities.max(axis=1)
    return {
        "images": len(outside_scores),
        "auroc": round(auroc(inside_scores, outside_scores), 4),
        "fpr95": round(fpr_at_95_tpr(inside_scores, outside_scores), 4),
        "baseline_auroc": round(auroc(baseline_inside, baseline_outside), 4),
        "baseline_fpr95": round(fpr_at_95_tpr(baseline_inside, baseline_outside), 4),
        "detection_rate": round(float(np.mean(outside_scores > threshold)), 4),
    }


def evaluate_ood(model, name, preprocessing, threshold, *, data_dir=None, count=1000, test_count=None,
                 seed=0, test_set=None):
    """`model.predict_with_scores(float32 images) -> (probabilities, scores)` against the test set
    and each kind of foreign image, all preprocessed as the gateway does with `preprocessing`.
    `test_set` (uint8 images, labels): a folder's test split, for a model of one's own (`name` its
    DatasetSpec)."""
    x_test, y_test = test_set if test_set is not None else load_data(name, data_dir)[1]
    if test_count is not None:
        x_test, y_test = x_test[:test_count], y_test[:test_count]
    test_probabilities, test_scores = model.predict_with_scores(as_served(x_test, preprocessing))
    kinds = {}
    own = None if test_set is None else x_test
    for kind, images in foreign_image_sets(name, count, seed, data_dir, own_images=own).items():
        probabilities, scores = model.predict_with_scores(as_served(images, preprocessing))
        kinds[kind] = compare_scores(test_scores, scores, test_probabilities, probabilities, threshold)
    return {
        "threshold": threshold,
        "seed": seed,
        "test_images": len(x_test),
        "test_accuracy_as_served": round(float(np.mean(test_probabilities.argmax(axis=1) == y_test)), 4),
        "test_flag_rate": round(float(np.mean(test_scores > threshold)), 4),
        "mean_detection_rate": round(float(np.mean([row["detection_rate"] for row in kinds.values()])), 4),
        "kinds": kinds,
    }


def render_table(result):
    """Markdown lines: one row per kind of foreign image, then the in-distribution flag rate."""
    lines = [
        "| foreign images | AUROC, ood_score | AUROC, max-softmax | FPR95, ood_score | FPR95, max-softmax "
        "| flagged at the threshold |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for kind, row in result["kinds"].items():
        lines.append(f"| {kind} ({row['images']}) | {row['auroc']:.4f} | {row['baseline_auroc']:.4f} "
                     f"| {row['fpr95']:.2%} | {row['baseline_fpr95']:.2%} | {row['detection_rate']:.2%} |")
    lines += [
        "",
        f"Threshold {result['threshold']:.4g}: {result['mean_detection_rate']:.2%} of foreign images flagged "
        f"on average, {result['test_flag_rate']:.2%} of the {result['test_images']:,} test images "
        f"(accuracy {result['test_accuracy_as_served']:.2%} as served). FPR95: the share of foreign images "
        "let through where 95 % of test images pass. All images went through the gateway's preprocessing.",
    ]
    return lines
