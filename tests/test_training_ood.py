"""Tests for the out-of-distribution score and the explanations inside an exported version
(training/ood.py, training/export.py), the foreign image sets and the OOD report, on a tiny MNIST
model trained once for the module.
"""

import dataclasses
import json
import os
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from training import ood, ood_features, pipeline
from training.__main__ import main
from training.datasets import get_spec, load_data
from training.export import ExportedModel, export_model
from training.foreign_images import as_served, foreign_image_sets
from training.ood_report import auroc, fpr_at_95_tpr
from training.shift_head import ShiftHeadTrainer

DATA_DIR = Path(os.environ.get("DATA_DIR") or Path(__file__).resolve().parents[2] / "shared" / "datasets")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(version directory, the Keras serving model, the calibrated score) of a tiny MNIST model."""
    if not (DATA_DIR / "mnist.npz").exists():
        pytest.skip(f"mnist.npz missing from {DATA_DIR}")
    return train_tiny("mnist", tmp_path_factory.mktemp("models"), limit=4000, epochs=2, ood_images=60,
                      ood_test_images=300)


def train_tiny(name, models_dir, trainers=None, **options):
    """(version directory, the Keras serving model, the calibrated score) of a tiny model of `name`;
    `trainers` (a list) gets the ShiftHeadTrainer where the profile trains a shift head."""
    exported = {}

    def keep_arguments(model, name, models_dir, **export_options):
        exported.update(model=model, score=export_options.get("ood_score"))
        return export_model(model, name, models_dir, **export_options)

    def keep_trainer(*arguments, **keywords):
        trainer = ShiftHeadTrainer(*arguments, **keywords)
        if trainers is not None:
            trainers.append(trainer)
        return trainer

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pipeline, "export_model", keep_arguments)
        patch.setattr(pipeline, "ShiftHeadTrainer", keep_trainer)
        version_dir = pipeline.train_and_export(name, profile="tiny", models_dir=models_dir,
                                                data_dir=DATA_DIR, verbose=0, latency_runs=2, **options)
    return version_dir, exported["model"], exported["score"]


@pytest.fixture(scope="module")
def test_inputs(trained):
    """The first MNIST test images as the gateway feeds them, with their labels."""
    _, (x_test, y_test) = load_data("mnist", DATA_DIR)
    return as_served(x_test[:300], ExportedModel(trained[0]).preprocessing), y_test[:300]


def serving_signature(version_dir, name="serving_default"):
    return tf.saved_model.load(str(version_dir)).signatures[name]


def test_serving_default_answers_the_same_probabilities_and_an_ood_score(trained, test_inputs):
    version_dir, model, score = trained
    images = test_inputs[0][:40]
    answer = serving_signature(version_dir)(images=tf.constant(images))
    assert set(answer) == {"probabilities", "ood_score"}
    assert answer["probabilities"].shape == (40, 10) and answer["ood_score"].shape == (40,)
    np.testing.assert_allclose(answer["probabilities"], model.predict(images, verbose=0), atol=1e-5)
    _, expected = ood.scores_in_batches(score, ood_features.FeatureClassifier(model), images)
    np.testing.assert_allclose(answer["ood_score"], expected, rtol=1e-4, atol=1e-3)


def test_ood_json_is_an_asset_consistent_with_the_validation_split(trained):
    version_dir, model, score = trained
    asset = json.loads((version_dir / "assets" / "ood.json").read_text())
    assert asset["output_key"] == "ood_score" and asset["target_in_distribution_flag_rate"] == 0.05
    assert isinstance(asset["threshold"], float) and asset["threshold"] == score.threshold
    assert isinstance(asset["method"], str) and asset["method"]
    calibration = asset["calibration"]
    assert calibration["split"] == "validation" and calibration["images"] == 400  # 10 % of 4,000
    assert 0.03 <= calibration["in_distribution_flag_rate"] <= 0.07
    # Each validation image scored as served counts itself among the reference: a little more typical.
    assert calibration["served_flag_rate"] <= calibration["in_distribution_flag_rate"]
    # The asset is tracked by the SavedModel (TF Serving copies it), not a file dropped beside it.
    saved = tf.saved_model.load(str(version_dir))
    assert Path(saved.ood.asset_path.numpy().decode()).name == "ood.json"
    record = json.loads((version_dir / "assets.extra" / "evaluation.json").read_text())
    assert record["ood_threshold"] == asset["threshold"] and record["ood_calibration"] == calibration

    # The calibration replays: the validation split, preprocessed as served, flags the recorded share.
    (x_train, y_train), _ = load_data("mnist", DATA_DIR)
    _, (validation, _) = pipeline.split_validation(x_train[:4000], y_train[:4000], 0.1, 1337)
    exported = ExportedModel(version_dir)
    _, scores = exported.predict_with_scores(as_served(validation, exported.preprocessing))
    assert np.mean(scores > asset["threshold"]) == pytest.approx(calibration["served_flag_rate"], abs=0.005)


def test_empty_frames_are_out_of_distribution(trained):
    version_dir, _, _ = trained
    threshold = json.loads((version_dir / "assets" / "ood.json").read_text())["threshold"]
    frames = np.zeros((6, 28, 28, 1), np.float32)
    frames[1] = 1.0
    frames[2] = 0.5
    frames[3] = 0.5 + np.random.default_rng(0).uniform(-0.02, 0.02, (28, 28, 1))  # near-constant
    frames[4, 10:12, 10:12] = 1.0  # four lit pixels: no digit
    frames[5, 14, 5:9] = 1.0
    scores = serving_signature(version_dir)(images=tf.constant(frames))["ood_score"].numpy()
    assert np.all(scores > threshold), scores


def test_foreign_images_score_higher_than_test_images(trained, test_inputs):
    version_dir, _, _ = trained
    exported = ExportedModel(version_dir)
    _, inside = exported.predict_with_scores(test_inputs[0])
    sets = foreign_image_sets("mnist", 60, seed=3, data_dir=DATA_DIR)
    for kind in ("uniform_noise", "gaussian_noise", "solid", "near_solid", "glyphs", "patterns"):
        _, outside = exported.predict_with_scores(as_served(sets[kind], exported.preprocessing))
        assert np.mean(outside) > np.mean(inside), kind
        assert auroc(inside, outside) > 0.8, kind


def test_foreign_image_sets_are_deterministic_and_shaped_like_the_model_input():
    if not (DATA_DIR / "cifar10.npz").exists():
        pytest.skip(f"data sets missing from {DATA_DIR}")
    first = foreign_image_sets("cifar10", 5, seed=1, data_dir=DATA_DIR)
    again = foreign_image_sets(get_spec("cifar10"), 5, seed=1, data_dir=DATA_DIR)  # as the pipeline asks
    assert {"mnist", "fashion_mnist", "uniform_noise", "glyphs", "solid", "inverted_cifar10"} <= set(first)
    for kind, images in first.items():
        assert images.shape == (5, 32, 32, 3) and images.dtype == np.uint8, kind
        np.testing.assert_array_equal(images, again[kind])
    assert "inverted_mnist" not in foreign_image_sets("mnist", 2, seed=1, data_dir=DATA_DIR)


def test_explain_answers_a_saliency_map_that_passes_the_deletion_test(trained, test_inputs):
    """Petsiuk et al. 2018: zeroing the 10 % most salient pixels must cost the top label far more
    probability than zeroing as many random foreground pixels."""
    version_dir, _, _ = trained
    images, labels = test_inputs
    served = serving_signature(version_dir)(images=tf.constant(images))["probabilities"].numpy()
    chosen = np.flatnonzero(served.argmax(axis=1) == labels)[:40]
    images = images[chosen]
    explain = serving_signature(version_dir, "explain")
    answer = explain(images=tf.constant(images))
    saliency, probabilities = answer["saliency"].numpy(), answer["probabilities"].numpy()
    assert saliency.shape == (len(chosen), 28, 28) and np.all(saliency >= 0)
    np.testing.assert_allclose(probabilities, served[chosen], atol=1e-5)

    top = probabilities.argmax(axis=1)
    removed = round(0.1 * 28 * 28)
    rng = np.random.default_rng(0)
    salient, random = images.copy(), images.copy()
    for index in range(len(images)):
        most = np.argsort(saliency[index].ravel())[::-1][:removed]
        salient[index].reshape(-1)[most] = 0
        foreground = np.flatnonzero(images[index].ravel() > 0)
        random[index].reshape(-1)[rng.choice(foreground, min(removed, len(foreground)), replace=False)] = 0
    signature = serving_signature(version_dir)
    rows = np.arange(len(images))
    before = probabilities[rows, top]
    salient_drop = before - signature(images=tf.constant(salient))["probabilities"].numpy()[rows, top]
    random_drop = before - signature(images=tf.constant(random))["probabilities"].numpy()[rows, top]
    # As many random foreground pixels are about half of a digit's: they cost the tiny model ~0.4.
    assert salient_drop.mean() > 0.6, salient_drop.mean()
    assert salient_drop.mean() > 2 * random_drop.mean(), (salient_drop.mean(), random_drop.mean())


def test_a_version_exported_without_a_score_still_loads_and_evaluates(trained, tmp_path, capsys):
    _, model, _ = trained
    version_dir = export_model(model, "mnist", tmp_path, metadata={})
    assert not (version_dir / "assets" / "ood.json").exists()
    assert list(serving_signature(version_dir)(images=tf.zeros([2, 28, 28, 1]))) == ["probabilities"]
    exported = ExportedModel(version_dir)
    probabilities, scores = exported.predict_with_scores(np.zeros((3, 28, 28, 1), np.float32))
    assert probabilities.shape == (3, 10) and scores is None and exported.ood is None
    arguments = ["evaluate", "--model", "mnist", "--models-dir", str(tmp_path), "--data-dir", str(DATA_DIR)]
    assert main(arguments) == 0
    assert "exported without an out-of-distribution score" in capsys.readouterr().out


def test_report_and_evaluate_give_the_ood_table(trained, capsys):
    version_dir, _, _ = trained
    record = json.loads((version_dir / "assets.extra" / "evaluation.json").read_text())
    result = record["out_of_distribution"]
    assert set(result["kinds"]) >= {"fashion_mnist", "cifar10", "uniform_noise", "glyphs", "solid"}
    for row in result["kinds"].values():
        assert set(row) == {"images", "auroc", "fpr95", "baseline_auroc", "baseline_fpr95", "detection_rate"}
    report = (version_dir / "REPORT.md").read_text()
    assert "## Out-of-distribution score" in report and "| glyphs (60) |" in report
    arguments = ["evaluate", "--model", "mnist", "--models-dir", str(version_dir.parent.parent),
                 "--data-dir", str(DATA_DIR), "--foreign-count", "60", "--test-count", "300"]
    assert main(arguments) == 0
    printed = capsys.readouterr().out
    # The same images, the same model: the same table as the report's.
    assert f"| glyphs (60) | {result['kinds']['glyphs']['auroc']:.4f} |" in printed
    assert "AUROC, max-softmax" in printed and "of the 300 test images" in printed


def test_auroc_and_fpr95_by_hand():
    assert auroc([0, 1], [2, 3]) == 1.0 and auroc([2, 3], [0, 1]) == 0.0
    assert auroc([1, 1], [1, 1]) == 0.5
    assert auroc([0, 2], [1, 3]) == 0.75
    inside = np.arange(100)  # 95th percentile: 94.05
    assert fpr_at_95_tpr(inside, [94, 95, 200, 300]) == 0.25


def test_fishers_method_reads_each_components_p_value_off_the_validation_images():
    """combine() against numpy: p = share of validation values at least as high, -sum(log p), and past the
    largest validation value p falls by e per standard deviation; one strong component alone is flagged."""
    rng = np.random.default_rng(0)
    validation = rng.normal(size=(3, 1000)).astype(np.float32)
    score = ood.OodScore(standardization={name: (0.0, 1.0) for name in "abc"},
                         reference=np.sort(validation, axis=1))
    images = rng.normal(size=(3, 50)).astype(np.float32)
    images[0, :5] = [3.0, 4.0, 6.0, 8.0, 10.0]  # past the validation maximum for the last ones
    images[1:, :5] = 0.0
    combined = ood.combine(score, [tf.constant(row) for row in images]).numpy()
    at_least = (validation[:, None, :] >= images[:, :, None]).sum(axis=2)
    log_p = np.log((at_least + 1) / 1001) - np.maximum(images - validation.max(axis=1, keepdims=True), 0)
    np.testing.assert_allclose(combined, -log_p.sum(axis=0), rtol=1e-5)
    assert np.all(np.diff(combined[:5]) > 0)  # still ordered past the validation values
    validation_scores = ood.combine(score, [tf.constant(row) for row in validation]).numpy()
    threshold = np.quantile(validation_scores, 0.95)
    assert np.mean(validation_scores > threshold) == pytest.approx(0.05, abs=0.002)
    # One component four deviations out, the others at their median: flagged.
    lone = ood.combine(score, [tf.constant([4.0]), tf.constant([0.0]), tf.constant([0.0])]).numpy()
    assert lone[0] > threshold


def test_calibration_reads_each_validation_images_p_value_among_the_others():
    """leave_out against a reference rebuilt without the image, image by image: the same score, the
    tail past the others' largest value included; as served, an image counting itself scores lower."""
    rng = np.random.default_rng(3)
    validation = rng.normal(size=(2, 40)).astype(np.float32)
    validation[0, 7] = 9.0  # the largest of its component, by far: its tail is read past the second largest
    whole = ood.OodScore(standardization={"a": (0.0, 1.0), "b": (0.0, 1.0)},
                         reference=np.sort(validation, axis=1))
    left_out = ood.combine(whole, [tf.constant(row) for row in validation], leave_out=True).numpy()
    for image in range(40):
        others = np.sort(np.delete(validation, image, axis=1), axis=1)
        alone = dataclasses.replace(whole, reference=others)
        expected = ood.combine(alone, [tf.constant(row[image:image + 1]) for row in validation]).numpy()
        assert left_out[image] == pytest.approx(expected[0], rel=1e-5), image
    served = ood.combine(whole, [tf.constant(row) for row in validation]).numpy()
    assert np.all(served <= left_out) and np.mean(served < left_out) > 0.9  # equal where p is 1 either way


def test_a_photo_score_flags_solid_colours_and_measures_texture():
    """Without a network: fit on random photos and features, calibrate, then score solid colours."""
    rng = np.random.default_rng(0)
    images = rng.random((200, 8, 8, 3)).astype(np.float32)
    features = {"penultimate": rng.random((200, 16)).astype(np.float32),
                "stage_1": rng.random((200, 8)).astype(np.float32)}
    logits = rng.normal(size=(200, 10)).astype(np.float32)
    score = ood.fit_ood_score(features, rng.integers(0, 10, 200), images, 10, light_on_dark=False)
    assert list(score.standardization) == ["energy", "mahalanobis", "smoothness", "stage_1"]
    score = ood.calibrate(score, images, features, logits)
    assert score.calibration["split"] == "validation" and score.calibration["images"] == 200
    assert score.calibration["in_distribution_flag_rate"] == 0.05
    assert score.calibration["served_flag_rate"] <= 0.05
    solid = np.broadcast_to(np.array([0.1, 0.5, 0.9], np.float32), (2, 8, 8, 3)).copy()
    first = {key: value[:2] for key, value in features.items()}
    scores = ood.ood_scores(score, tf.constant(solid), first, logits[:2]).numpy()
    assert np.all(scores > score.threshold + ood.EMPTY_SCORE / 2)


def test_a_photo_model_scores_its_earlier_stages_in_the_exported_graph(tmp_path_factory):
    """A tiny cifar10 model: the score gets a component per earlier stage (Lee et al.'s feature ensemble)
    and, trained with a shift head as the quick model is, the head's logit; the exported serving_default
    answers what the same ops answer in Python."""
    if not (DATA_DIR / "cifar10.npz").exists():
        pytest.skip(f"cifar10.npz missing from {DATA_DIR}")
    trainers = []
    version_dir, model, score = train_tiny("cifar10", tmp_path_factory.mktemp("models"), trainers, limit=600,
                                           epochs=1, ood_images=20, ood_test_images=100)
    # tiny: two stages, each ending in pooling; the last one's output is the penultimate features
    assert list(score.standardization) == ["energy", "mahalanobis", "smoothness", "stage_1", "shifted"]
    assert json.loads((version_dir / "assets" / "ood.json").read_text())["method"] == (
        "fisher-of-empirical-p(energy, mahalanobis, smoothness, stage_1, shifted)")
    # The head as trained (the classifier reads the last 8×8×16 map, flattened).
    (trainer,) = trainers
    np.testing.assert_array_equal(score.shift_kernel, trainer.head.kernel.numpy())
    np.testing.assert_array_equal(score.shift_bias, trainer.head.bias.numpy())
    assert score.shift_kernel.shape == (8 * 8 * 16, 1) and np.any(score.shift_bias != 0)
    _, (x_test, _) = load_data("cifar10", DATA_DIR)
    images = as_served(x_test[:40], ExportedModel(version_dir).preprocessing)
    answer = serving_signature(version_dir)(images=tf.constant(images))
    classifier = ood_features.FeatureClassifier(model, stages=True)
    probabilities, expected = ood.scores_in_batches(score, classifier, images)
    np.testing.assert_allclose(answer["probabilities"], probabilities, atol=1e-5)
    np.testing.assert_allclose(answer["ood_score"], expected, rtol=1e-4, atol=1e-3)
    # The stage's own component tells noise from photos (noise's texture alone would flag it otherwise).
    noise = np.random.default_rng(0).random((40, 32, 32, 3)).astype(np.float32)

    def stage_component(inputs):
        _, features, logits = classifier(tf.constant(inputs))
        assert features["stage_1"].shape == (len(inputs), 16)
        mean, deviation = score.standardization["stage_1"]
        return (ood.component_scores(score, inputs, features, logits)["stage_1"].numpy() - mean) / deviation

    assert np.median(stage_component(noise)) > np.quantile(stage_component(images), 0.9)
