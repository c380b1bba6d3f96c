"""The out-of-distribution score that an exported version answers beside its probabilities.

Two distances, each standardized on the validation split, and their maximum: Mahalanobis distance
of the classifier's penultimate features to the nearest class mean under one shared covariance
(Lee et al. 2018), its top principal directions exact and the rest isotropic, and the input's
residual off its top principal components (what no training image looks like). Frames that are
(nearly) empty are out of distribution by definition. Fitted on training images, its threshold
calibrated on validation images for a 5 % in-distribution flag rate; both halves run in-graph.
"""

import dataclasses
import json

import keras
import numpy as np
import tensorflow as tf

from .models import FlipAveraging, TemperatureScaling

METHOD = "max-standardized(mahalanobis, input-pca)"
OUTPUT_KEY = "ood_score"
ASSET = "ood.json"
TARGET_FLAG_RATE = 0.05
FEATURE_COMPONENTS = 64  # principal directions of the features kept exact; the rest share one variance
INPUT_COMPONENTS = 32  # principal components of the input that reconstruct it
EMPTY_SCORE = 1000.0  # added to an empty frame's score: far above any threshold
MIN_RANGE = 0.1  # a frame whose pixels span less than this (of [0, 1]) is empty
FOREGROUND_LEVEL = 0.5  # light-on-dark data sets: a pixel above this is foreground


@dataclasses.dataclass
class OodScore:
    """The fitted score: float32 arrays for the graph, and what ood.json says about them."""

    feature_mean: np.ndarray  # [D]
    feature_projection: np.ndarray  # [D, k]: top principal directions, scaled
    feature_cross: np.ndarray  # [D, classes]
    class_offsets: np.ndarray  # [classes]
    residual_precision: float  # 1 / the variance shared by the other directions
    input_mean: np.ndarray  # [H*W*C]
    input_basis: np.ndarray  # [H*W*C, m]
    standardization: dict  # component -> (mean, standard deviation) on the validation split
    min_foreground_pixels: int  # light-on-dark: fewer foreground pixels than this is an empty frame
    threshold: float = float("nan")
    calibration: dict = dataclasses.field(default_factory=dict)

    def asset(self):
        """The contents of assets/ood.json."""
        return {
            "output_key": OUTPUT_KEY,
            "threshold": self.threshold,
            "method": METHOD,
            "target_in_distribution_flag_rate": TARGET_FLAG_RATE,
            "calibration": self.calibration,
            "empty_frame": {"min_range": MIN_RANGE, "foreground_level": FOREGROUND_LEVEL,
                            "min_foreground_pixels": self.min_foreground_pixels, "score_added": EMPTY_SCORE},
        }


def classifier_parts(serving_model):
    """(core network, mirror-averaged?, temperature or None) of a model that pipeline._serving_model
    and models.with_temperature built."""
    model, temperature, flip = serving_model, None, False
    if isinstance(model.layers[-1], TemperatureScaling):
        temperature = model.layers[-1].temperature
        model = next(layer for layer in model.layers if isinstance(layer, keras.Model))
    if isinstance(model.layers[-1], FlipAveraging):
        flip, model = True, model.layers[-1].model
    return model, flip, temperature


class FeatureClassifier:
    """images -> (probabilities exactly as the serving model answers them, penultimate features),
    from one pass through the network."""

    def __init__(self, serving_model):
        core, self.flip, temperature = classifier_parts(serving_model)
        classifier = [layer for layer in core.layers if isinstance(layer, keras.layers.Dense)][-1]
        self.network = keras.Model(core.inputs, [core.output, classifier.input])
        self.temperature = TemperatureScaling(temperature) if temperature is not None else None

    def __call__(self, images):
        probabilities, features = self.network(images, training=False)
        if self.flip:
            mirrored, mirrored_features = self.network(tf.reverse(images, axis=[2]), training=False)
            probabilities = (probabilities + mirrored) / 2
            features = (features + mirrored_features) / 2
        if self.temperature is not None:
            probabilities = self.temperature(probabilities)
        return probabilities, features

    def predict(self, images, batch_size=500):
        """numpy (probabilities, features) for float32 images."""
        batches = [self(tf.constant(images[start:start + batch_size]))
                   for start in range(0, len(images), batch_size)]
        return (np.concatenate([np.asarray(p) for p, _ in batches]),
                np.concatenate([np.asarray(f) for _, f in batches]))


def fit_ood_score(features, labels, images, num_classes, *, light_on_dark):
    """Fit on training images (float32 [N, H, W, C]), their features and labels; not yet standardized
    or calibrated (see `calibrate`)."""
    features = np.asarray(features, np.float64)
    mean = features.mean(axis=0)
    centered = features - mean
    class_means = np.stack([centered[labels == label].mean(axis=0) if np.any(labels == label)
                            else np.zeros(centered.shape[1]) for label in range(num_classes)])
    within = centered - class_means[labels]
    covariance = within.T @ within / len(within)
    eigenvalues, eigenvectors = np.linalg.eigh(covariance)
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
    k = min(FEATURE_COMPONENTS, len(eigenvalues) - 1)
    floor = 1e-6 * max(float(eigenvalues[0]), 1e-12)
    top = np.maximum(eigenvalues[:k], floor)
    rest = max(float(eigenvalues[k:].mean()), floor)
    # d_c = ||f||² / rest - ||f B||² + (f C)_c + offset_c for centred features f: the squared distance to
    # class mean c with the covariance's top k directions exact and the rest of variance `rest`.
    vectors = eigenvectors[:, :k]
    projection = vectors * np.sqrt(np.maximum(1 / rest - 1 / top, 0))
    projected_means = class_means @ vectors  # [classes, k]
    cross = -2 * (vectors @ (projected_means / top).T) + 2 * (vectors @ projected_means.T) / rest \
        - 2 * class_means.T / rest
    offsets = ((projected_means ** 2 / top).sum(axis=1)
               + ((class_means ** 2).sum(axis=1) - (projected_means ** 2).sum(axis=1)) / rest)

    flat = np.asarray(images, np.float64).reshape(len(images), -1)
    input_mean = flat.mean(axis=0)
    _, _, components = np.linalg.svd(flat - input_mean, full_matrices=False)
    m = min(INPUT_COMPONENTS, len(components))

    min_foreground = 0
    if light_on_dark:
        counts = (flat > FOREGROUND_LEVEL).sum(axis=1)
        min_foreground = int(0.5 * np.percentile(counts, 0.01))  # half the sparsest training image's
    return OodScore(
        feature_mean=mean.astype(np.float32), feature_projection=projection.astype(np.float32),
        feature_cross=cross.astype(np.float32), class_offsets=offsets.astype(np.float32),
        residual_precision=1 / rest, input_mean=input_mean.astype(np.float32),
        input_basis=components[:m].T.astype(np.float32),
        standardization={"mahalanobis": (0.0, 1.0), "input_pca": (0.0, 1.0)},
        min_foreground_pixels=min_foreground,
    )


def component_scores(score, images, features):
    """{component: raw score [N]} in float32 TensorFlow ops, as the graph computes them."""
    features = tf.convert_to_tensor(features, tf.float32) - score.feature_mean
    weights = tf.constant(np.concatenate([score.feature_projection, score.feature_cross], axis=1))
    k = score.feature_projection.shape[1]
    combined = tf.matmul(features, weights)
    per_image = (tf.reduce_sum(tf.square(features), axis=1) * np.float32(score.residual_precision)
                 - tf.reduce_sum(tf.square(combined[:, :k]), axis=1))
    distances = per_image[:, None] + combined[:, k:] + score.class_offsets
    mahalanobis = tf.reduce_min(distances, axis=1)

    flat = tf.reshape(images, [tf.shape(images)[0], -1]) - score.input_mean
    reconstructed = tf.matmul(flat, score.input_basis)
    residual = tf.reduce_sum(tf.square(flat), axis=1) - tf.reduce_sum(tf.square(reconstructed), axis=1)
    return {"mahalanobis": mahalanobis, "input_pca": residual}


def empty_frames(score, images):
    """float32 [N]: 1 where the frame is (nearly) constant or, light on dark, has almost no foreground."""
    flat = tf.reshape(images, [tf.shape(images)[0], -1])
    empty = tf.reduce_max(flat, axis=1) - tf.reduce_min(flat, axis=1) < MIN_RANGE
    if score.min_foreground_pixels:
        foreground = tf.reduce_sum(tf.cast(flat > FOREGROUND_LEVEL, tf.float32), axis=1)
        empty = tf.logical_or(empty, foreground < score.min_foreground_pixels)
    return tf.cast(empty, tf.float32)


def ood_scores(score, images, features):
    """The score [N]: the larger standardized component, plus EMPTY_SCORE for an empty frame."""
    components = component_scores(score, images, features)
    standardized = [(components[name] - np.float32(mean)) / np.float32(deviation)
                    for name, (mean, deviation) in score.standardization.items()]
    return tf.reduce_max(tf.stack(standardized, axis=1), axis=1) + EMPTY_SCORE * empty_frames(score, images)


def calibrate(score, images, features, *, split="validation"):
    """Standardize each component on these in-distribution images, then set the threshold that
    flags TARGET_FLAG_RATE of them; answers the calibrated score."""
    components = {name: np.asarray(value, np.float64)
                  for name, value in component_scores(score, images, features).items()}
    standardization = {name: (float(value.mean()), float(max(value.std(), 1e-6)))
                       for name, value in components.items()}
    score = dataclasses.replace(score, standardization=standardization)
    scores = np.asarray(ood_scores(score, images, features))
    threshold = float(np.quantile(scores[scores < EMPTY_SCORE / 2], 1 - TARGET_FLAG_RATE))
    return dataclasses.replace(score, threshold=threshold, calibration={
        "split": split, "images": int(len(scores)),
        "in_distribution_flag_rate": round(float(np.mean(scores > threshold)), 4)})


def scores_in_batches(score, classifier, images, batch_size=500):
    """numpy (probabilities, ood scores) for float32 images, through the same ops as the export."""
    probabilities, scores = [], []
    for start in range(0, len(images), batch_size):
        batch = tf.constant(images[start:start + batch_size])
        batch_probabilities, features = classifier(batch)
        probabilities.append(np.asarray(batch_probabilities))
        scores.append(np.asarray(ood_scores(score, batch, features)))
    return np.concatenate(probabilities), np.concatenate(scores)


def read_asset(version_dir):
    """ood.json of an exported version, or None for versions exported without a score."""
    path = version_dir / "assets" / ASSET
    return json.loads(path.read_text()) if path.exists() else None
