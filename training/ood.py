"""The out-of-distribution score that an exported version answers beside its probabilities.

Components: the energy score of the logits (Liu et al. 2020: -logsumexp, low where the network is
confident about any class), the Mahalanobis distance of the pooled penultimate features to the nearest
class mean under one shared covariance (Lee et al. 2018: far from every class the network knows), and
for photos how far the input's texture (log mean difference of neighbouring pixels) is from the
validation images' either way (blurred, flat, drawn or noisy frames) and the Mahalanobis distance of the
first stage's feature statistics (square roots of per channel mean and mean square over positions) to
the training images' (after Lee et al.'s feature ensemble: low-level evidence the last layer has
discarded), and for networks trained with a shift head (shift_head.py) its logit: how much the image
looks like a turned or recoloured copy of a photo ("shifted"). The score combines the components by
Fisher's method: each one's p-value among the validation images', summed as -log (`combine`). The
input's residual off its principal components ("input_pca") can be added; it measured worse. Frames that
are (nearly) empty are out of distribution by definition. Fitted on training images, its threshold
calibrated on validation images for a 5 % in-distribution flag rate; all of it runs in-graph, in few
ops: at batch 1 a call's cost is mostly its op count (docs/benchmarks.md). A model imported from
elsewhere is known by its answers alone: its score reads the max-softmax and, for photos, the input's
texture (ANSWER_COMPONENTS), calibrated on part of the folder it is imported with. The measurements
behind these choices: docs/training.md.
"""

import dataclasses
import json
import logging

import numpy as np
import tensorflow as tf

logger = logging.getLogger(__name__)

# Of "energy", "mahalanobis", "smoothness", "stages", "input_pca" (see the module's docstring; "stages"
# becomes one component per stage, "stage_1", ...). The gateway stretches the contrast of light-on-dark
# uploads and crops them, which leaves their texture no signal (it cost the digit model 6 points of AUROC
# on glyphs); photos keep theirs.
COMPONENTS = {"light_on_dark": ("energy", "mahalanobis"),
              "photo": ("energy", "mahalanobis", "smoothness", "stages")}
# A model imported from elsewhere is known by its answers alone: no logits, no features. Its score reads
# how sure the answer is (max-softmax: Hendrycks & Gimpel 2017) and, for photos, the input's texture.
ANSWER_COMPONENTS = {"light_on_dark": ("max_softmax",), "photo": ("max_softmax", "smoothness")}
TWO_SIDED = ("smoothness",)  # components whose distance either way from the validation mean counts
OUTPUT_KEY = "ood_score"
ASSET = "ood.json"
TARGET_FLAG_RATE = 0.05
# Fewer calibration (validation) images than this and no score: a component's p-value is never below
# 1 / (n + 1), so with few images far-off inputs score little above typical ones (with 30, a threshold of 4.0
# let uniform noise through at 3.5), and a 5 % threshold rests on one or two images (one image gave a
# threshold of 0, which flags every input; 10 images flagged 22 % of the test images).
MIN_CALIBRATION_IMAGES = 50
SHRINKAGE = 1e-3  # of the mean variance, added to the covariance's diagonal
INPUT_COMPONENTS = 32  # principal components of the input that reconstruct it
EMPTY_SCORE = 1000.0  # added to an empty frame's score: far above any threshold
MIN_RANGE = 0.1  # a frame whose pixels span less than this (of [0, 1]) is empty
FOREGROUND_LEVEL = 0.5  # light-on-dark data sets: a pixel above this is foreground
FEW_IMAGES = 1000  # fewer fitting images than this: the empty-frame rule's cut-off is set lower
# A training set with more (nearly) empty frames than this share has them as data (colour swatches, plain
# cards, images of a pixel or two): then the rule would flag the model's own classes, so it is not applied.
MAX_EMPTY_SHARE = 0.01


@dataclasses.dataclass
class OodScore:
    """The fitted score: float32 arrays for the graph (those of its components), and what ood.json says."""

    standardization: dict  # component -> (mean, standard deviation) on the validation split
    min_foreground_pixels: int = 0  # light-on-dark: fewer foreground pixels than this is an empty frame
    empty_frame_rule: bool = True  # False: the training images hold empty frames (MAX_EMPTY_SHARE)
    feature_mean: np.ndarray | None = None  # mahalanobis: [D] of the pooled features
    feature_projection: np.ndarray | None = None  # [D, D]: a square root of the shared precision
    feature_cross: np.ndarray | None = None  # [D, classes]
    class_offsets: np.ndarray | None = None  # [classes]
    # stages: per stage ("stage_1", ...), the training images' mean [D] and a square root [D, D] of the
    # precision of their pooled statistics (one Gaussian: early features say little about the class)
    stage_gaussians: dict = dataclasses.field(default_factory=dict)
    # Fisher's method: per component (in standardization's order), its sorted validation values as
    # `orient` gives them [components, images], against which an image's p-value is read
    reference: np.ndarray | None = None
    # shifted: the shift head's logistic weights (shift_head.py) on the classifier's input, [D, 1] and [1]
    shift_kernel: np.ndarray | None = None
    shift_bias: np.ndarray | None = None
    input_mean: np.ndarray | None = None  # input_pca: [H*W*C]
    input_basis: np.ndarray | None = None  # [H*W*C, m]
    threshold: float = float("nan")
    calibration: dict = dataclasses.field(default_factory=dict)

    def asset(self):
        """The contents of assets/ood.json."""
        return {
            "output_key": OUTPUT_KEY,
            "threshold": self.threshold,
            "method": method_name(self.standardization),
            "target_in_distribution_flag_rate": TARGET_FLAG_RATE,
            "calibration": self.calibration,
            "empty_frame": {"min_range": MIN_RANGE, "foreground_level": FOREGROUND_LEVEL,
                            "min_foreground_pixels": self.min_foreground_pixels, "score_added": EMPTY_SCORE}
            if self.empty_frame_rule else None,
        }


def method_name(components):
    components = list(components)
    return f"fisher-of-empirical-p({', '.join(components)})" if len(components) > 1 else components[0]


def components_for(light_on_dark, *, answers_only=False):
    return (ANSWER_COMPONENTS if answers_only else COMPONENTS)["light_on_dark" if light_on_dark else "photo"]


def needs_features(score):
    """Whether the score reads the network's logits or features, not only its probabilities."""
    return any(name in score.standardization for name in ("energy", "mahalanobis", "shifted")) or bool(
        score.stage_gaussians)


def fit_ood_score(features, labels, images, num_classes, *, light_on_dark, components=None, shift_head=None):
    """Fit on training images (float32 [N, H, W, C]), their features (ood_features.FeatureClassifier's,
    with the stages where the components have "stages") and labels; not yet standardized or calibrated
    (see `calibrate`). `shift_head`: (kernel, bias) of a network trained with one (shift_head.py), which
    adds the component "shifted"."""
    components = tuple(components or components_for(light_on_dark))
    if shift_head is not None and "shifted" not in components:
        components += ("shifted",)
    if "shifted" in components and shift_head is None:
        raise ValueError("the component 'shifted' reads a shift head: give shift_head=(kernel, bias)")
    # A network with a single pooling layer (or none) has no earlier stage: then "stages" adds nothing.
    stages = sorted((key for key in features if key.startswith("stage_")), key=lambda key: int(key[6:]))
    names = [name for component in components
             for name in (stages if component == "stages" else [component])]
    score = OodScore(standardization={name: (0.0, 1.0) for name in names})
    if shift_head is not None:
        score.shift_kernel, score.shift_bias = (np.asarray(array, np.float32) for array in shift_head)
    for stage in stages if "stages" in components else []:
        statistics = np.asarray(features[stage], np.float64)
        mean = statistics.mean(axis=0)
        centered = statistics - mean
        precision = _shrunk_precision(centered.T @ centered / len(centered))
        score.stage_gaussians[stage] = (mean.astype(np.float32),
                                        np.linalg.cholesky(precision).astype(np.float32))
    flat = np.asarray(images, np.float32).reshape(len(images), -1)
    if light_on_dark:
        counts = (flat > FOREGROUND_LEVEL).sum(axis=1)
        # Half the foreground of the sparsest training images; a quarter where there are few of them, whose
        # sparsest is no rare one (50 Fashion-MNIST images as served: half of theirs called 0.5 % of new
        # images empty on average, 2 % one time in 20; a quarter 0.1 % and 0.6 %).
        share = 0.5 if len(counts) >= FEW_IMAGES else 0.25
        score.min_foreground_pixels = int(share * np.percentile(counts, 0.01))
    empty = float(np.mean(np.asarray(empty_frames(score, tf.constant(np.asarray(images, np.float32))))))
    if empty > MAX_EMPTY_SHARE:
        logger.warning("%.1f%% of the training images are (nearly) empty frames, more than %.0f%%: they are "
                       "this model's data, so the score does not flag empty frames by rule", 100 * empty,
                       100 * MAX_EMPTY_SHARE)
        score.empty_frame_rule = False
    if "mahalanobis" in components:
        _fit_mahalanobis(score, np.asarray(features["penultimate"], np.float64), labels, num_classes)
    if "input_pca" in components:
        score.input_mean = flat.mean(axis=0)
        _, _, directions = np.linalg.svd(flat - score.input_mean, full_matrices=False)
        score.input_basis = directions[:INPUT_COMPONENTS].T.astype(np.float32)
    return score


def _fit_mahalanobis(score, features, labels, num_classes):
    mean = features.mean(axis=0)
    centered = features - mean
    class_means = np.stack([centered[labels == label].mean(axis=0) if np.any(labels == label)
                            else np.zeros(centered.shape[1]) for label in range(num_classes)])
    within = centered - class_means[labels]
    precision = _shrunk_precision(within.T @ within / len(within))
    # d_c = ||f L||² + (f C)_c + offset_c for centred features f, with L Lᵀ the precision: the squared
    # Mahalanobis distance to class mean c, from one small matrix product.
    score.feature_mean = mean.astype(np.float32)
    score.feature_projection = np.linalg.cholesky(precision).astype(np.float32)
    score.feature_cross = (-2 * precision @ class_means.T).astype(np.float32)
    score.class_offsets = np.einsum("cd,de,ce->c", class_means, precision, class_means).astype(np.float32)


def _shrunk_precision(covariance):
    """The inverse of the covariance after a little shrinkage: some channels hardly vary on training
    images (ReLUs that rarely fire)."""
    size = len(covariance)
    return np.linalg.inv(covariance + SHRINKAGE * np.trace(covariance) / size * np.eye(size))


def component_scores(score, images, features, logits):
    """{component: raw score [N]} in float32 TensorFlow ops, as the graph computes them. `features`:
    ood_features.FeatureClassifier's, or for a score that only reads answers, {"probabilities": [N, C]}."""
    scores = {}
    if "max_softmax" in score.standardization:
        scores["max_softmax"] = -tf.reduce_max(features["probabilities"], axis=1)
    if "energy" in score.standardization:
        # -logsumexp by hand: tf.reduce_logsumexp adds checks for infinite logits, four ops more.
        largest = tf.reduce_max(logits, axis=1, keepdims=True)
        scores["energy"] = -(largest[:, 0] + tf.math.log(tf.reduce_sum(tf.exp(logits - largest), axis=1)))
    if "mahalanobis" in score.standardization:
        # For the centred features f: [f L, f C + offsets] = [x L, x C] - [m L, m C - offsets] for the raw x.
        weights = np.concatenate([score.feature_projection, score.feature_cross], axis=1)
        shift = score.feature_mean.astype(np.float64) @ weights - np.concatenate(
            [np.zeros(score.feature_projection.shape[1]), score.class_offsets])
        k = score.feature_projection.shape[1]
        penultimate = tf.convert_to_tensor(features["penultimate"], tf.float32)
        projected, cross = tf.split(tf.matmul(penultimate, weights) - shift.astype(np.float32),
                                    [k, weights.shape[1] - k], axis=1)
        # ||f L||² is the same for every class: the nearest class is the smallest of the rest.
        scores["mahalanobis"] = tf.reduce_sum(tf.square(projected), axis=1) + tf.reduce_min(cross, axis=1)
    if "shifted" in score.standardization:  # the head's logit: higher where more like a shifted copy
        inputs = tf.convert_to_tensor(features["classifier_input"], tf.float32)
        scores["shifted"] = tf.matmul(inputs, score.shift_kernel)[:, 0] + score.shift_bias[0]
    for stage, (mean, projection) in score.stage_gaussians.items():
        projected = tf.matmul(tf.convert_to_tensor(features[stage], tf.float32) - mean, projection)
        scores[stage] = tf.reduce_sum(tf.square(projected), axis=1)
    if "smoothness" in score.standardization:
        # Log mean absolute difference of neighbouring pixels: photos have texture; blurred, flat or
        # drawn frames have too little, noise too much (the two-sided part is in TWO_SIDED).
        # On the image as rows of H × (W·C) values: contiguous slices, which cost a few µs where the
        # same slices of [N, H, W, C] cost about 40 and a depthwise convolution 130 (docs/benchmarks.md).
        _, height, width, channels = images.shape
        rows = tf.reshape(images, [-1, height, width * channels])
        across = tf.reduce_mean(tf.abs(rows[:, :, channels:] - rows[:, :, :-channels]), axis=[1, 2])
        down = tf.reduce_mean(tf.abs(rows[:, 1:] - rows[:, :-1]), axis=[1, 2])
        scores["smoothness"] = tf.math.log(across + down + 1e-3)
    if "input_pca" in score.standardization:
        flat = tf.reshape(images, [tf.shape(images)[0], -1]) - score.input_mean
        reconstructed = tf.matmul(flat, score.input_basis)
        scores["input_pca"] = (tf.reduce_sum(tf.square(flat), axis=1)
                               - tf.reduce_sum(tf.square(reconstructed), axis=1))
    return scores


def empty_frames(score, images):
    """bool [N]: where the frame is (nearly) constant or, light on dark, has almost no foreground (never,
    where the score's empty-frame rule is off)."""
    if not score.empty_frame_rule:
        return tf.zeros([tf.shape(images)[0]], tf.bool)
    # In every channel: a solid colour is empty too.
    if images.shape[-1] == 1:  # one channel: no maximum over channels to take
        spread = tf.reduce_max(images, axis=[1, 2, 3]) - tf.reduce_min(images, axis=[1, 2, 3])
    else:
        spread = tf.reduce_max(tf.reduce_max(images, axis=[1, 2]) - tf.reduce_min(images, axis=[1, 2]),
                               axis=1)
    empty = spread < MIN_RANGE
    if score.min_foreground_pixels:
        foreground = tf.reduce_sum(tf.cast(images > FOREGROUND_LEVEL, tf.float32), axis=[1, 2, 3])
        empty = tf.logical_or(empty, foreground < score.min_foreground_pixels)
    return empty


def ood_scores(score, images, features, logits):
    """The score [N]: the combined components, plus EMPTY_SCORE for an empty frame."""
    combined = combine(score, oriented_components(score, images, features, logits))
    if not score.empty_frame_rule:
        return combined
    return tf.where(empty_frames(score, images), combined + EMPTY_SCORE, combined)


def oriented_components(score, images, features, logits):
    """[N] per component, in standardization's order, as `orient` gives them."""
    return orient(score, component_scores(score, images, features, logits))


def orient(score, components):
    """`component_scores`' values as Fisher's method reads them, higher where less like the validation
    images: as they are, TWO_SIDED ones as their distance from the validation images' mean. A list in
    standardization's order. (p-values do not change when a component is scaled, so only the tail past
    the largest validation value needs the deviation; `combine` applies it there.)"""
    return [tf.abs(components[name] - np.float32(mean)) if name in TWO_SIDED else components[name]
            for name, (mean, _) in score.standardization.items()]


def combine(score, oriented, *, leave_out=False):
    """[N]: Fisher's method, -sum(log p), with each component's p the share of validation images that
    score at least as high (a lone component is answered standardized). A p-value puts every component
    on the same scale whatever its tail's shape, so one component's strong evidence is not drowned out by
    the others' spread on in-distribution images: on the quick models it flagged more foreign images of
    every kind than the norm of the standardized components did, cifar10's photo negatives most
    (docs/training.md). Beyond the largest validation value, p keeps falling by a factor of e per standard
    deviation.

    `leave_out` (calibration only): the images are the validation images themselves, each of which the
    reference holds; each one's p is read among the others, as a new image's would be. Counting itself
    would make every validation image look a little more typical, and a threshold set on them flag more
    than its target of new images where there are few (5.7 % for 5 % at 500 in simulation)."""
    if len(oriented) == 1:
        (name, (mean, deviation)), = score.standardization.items()
        centre = 0.0 if name in TWO_SIDED else mean
        return (oriented[0] - np.float32(centre)) * np.float32(1 / deviation)
    if score.reference is None:
        raise ValueError("the score is not calibrated: combining components needs calibrate()'s reference")
    values = tf.stack(oriented)  # [components, N]
    count = score.reference.shape[1]
    # One op for every component: the number of validation values below each image's. (The raw op:
    # tf.searchsorted adds five ops that reshape its 2-D inputs to 2-D.)
    below = tf.cast(tf.raw_ops.LowerBound(sorted_inputs=tf.constant(score.reference), values=values,
                                          out_type=tf.int32), tf.float32)
    largest = score.reference[:, -1:]  # numpy: a constant in the graph, not a slice to run
    if leave_out and count > 1:  # one validation image has no others to be read among
        # Among the other count - 1 values, count - below - 1 are at least as high (itself is not below
        # itself): p = (count - below) / count, and the tail starts at the others' largest.
        largest = tf.where(values >= largest, score.reference[:, -2:-1], largest)
    else:
        count += 1  # p = (count - below + 1) / (count + 1)
    # -log p = log(count) - log(count - below), its constant part added once.
    deviations = np.array([[deviation] for _, deviation in score.standardization.values()], np.float32)
    tail = tf.nn.relu((values - largest) * (1 / deviations))
    constant = np.float32(len(oriented) * np.log(count))
    return constant - tf.reduce_sum(tf.math.log(count - below) - tail, axis=0)


def calibrate(score, images, features, logits, *, split="validation"):
    """Standardize each component on these in-distribution images and keep their values (`orient`'s) as
    Fisher's reference, then set the threshold that flags TARGET_FLAG_RATE of them, each scored against
    the others (`combine`'s leave_out); answers the calibrated score. Its calibration records both that
    rate and the rate of the score as served, where each validation image counts itself."""
    components = component_scores(score, images, features, logits)
    standardization = {}
    for name in score.standardization:
        values = np.asarray(components[name], np.float64)
        standardization[name] = (float(values.mean()), float(max(values.std(), 1e-6)))
    score = dataclasses.replace(score, standardization=standardization)
    oriented = orient(score, components)
    reference = np.sort(np.stack([np.asarray(value) for value in oriented]), axis=1)
    score = dataclasses.replace(score, reference=reference.astype(np.float32))
    # As ood_scores, from the components computed once: read among the others, and as served.
    empty = np.where(np.asarray(empty_frames(score, images)), EMPTY_SCORE, 0.0)
    scores = np.asarray(combine(score, oriented, leave_out=True)) + empty
    threshold = float(np.quantile(scores[scores < EMPTY_SCORE / 2], 1 - TARGET_FLAG_RATE))
    served = np.asarray(combine(score, oriented)) + empty
    return dataclasses.replace(score, threshold=threshold, calibration={
        "split": split, "images": int(len(scores)),
        "in_distribution_flag_rate": round(float(np.mean(scores > threshold)), 4),
        "served_flag_rate": round(float(np.mean(served > threshold)), 4)})


def scores_in_batches(score, classifier, images, batch_size=500):
    """numpy (probabilities, ood scores) for float32 images, through the same ops as the export."""
    probabilities, scores = [], []
    for start in range(0, len(images), batch_size):
        batch = tf.constant(images[start:start + batch_size])
        batch_probabilities, features, logits = classifier(batch)
        probabilities.append(np.asarray(batch_probabilities))
        scores.append(np.asarray(ood_scores(score, batch, features, logits)))
    return np.concatenate(probabilities), np.concatenate(scores)


def read_asset(version_dir):
    """ood.json of an exported version, or None for versions exported without a score."""
    path = version_dir / "assets" / ASSET
    return json.loads(path.read_text()) if path.exists() else None
