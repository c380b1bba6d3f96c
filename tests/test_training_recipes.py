"""Tests for the training recipes: batch augmentation (training/augmentation.py), the
one-cycle schedule, mirror-image averaging and the profiles' networks.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from training.augmentation import Augmentation, augment_batch
from training.datasets import DATASETS
from training.models import LabelledAccuracy, build_model, with_flip_averaging
from training.ood_report import auroc
from training.outliers import MIN_DIFFERENCE, PERMUTATIONS, shifted_copies
from training.profiles import PROFILES
from training.schedules import OneCycle
from training.shift_head import ShiftHeadTrainer
from training.train import training_dataset


def generator():
    return tf.random.Generator.from_seed(7)


def numbered_images(count=16, size=8):
    """Every pixel distinct, so a shift or a mirror image can be recognised exactly."""
    return tf.reshape(tf.range(count * size * size, dtype=tf.float32) + 1, (count, size, size, 1))


def test_pad_and_crop_shifts_by_whole_pixels():
    images = numbered_images()
    shifted = augment_batch(images, Augmentation(shift=2), generator()).numpy()
    for original, result in zip(images.numpy(), shifted, strict=True):
        # Some shift (dy, dx) in [-2, 2]^2 maps the original onto the crop where both overlap.
        matches = [
            (dy, dx) for dy in range(-2, 3) for dx in range(-2, 3)
            if np.array_equal(np.roll(original, (dy, dx), axis=(0, 1))[2:-2, 2:-2], result[2:-2, 2:-2])
        ]
        assert len(matches) == 1
        assert set(result[result != 0]) <= set(original.ravel())  # the image's own pixels, or black padding


def test_reflect_padding_never_leaves_black_borders():
    shifted = augment_batch(numbered_images(), Augmentation(shift=3, reflect=True), generator()).numpy()
    assert np.count_nonzero(shifted == 0) == 0


def test_flip_mirrors_some_images_and_keeps_the_rest():
    images = numbered_images(count=64)
    flipped = augment_batch(images, Augmentation(flip=True), generator()).numpy()
    pairs = list(zip(images.numpy(), flipped, strict=True))
    mirrored = [np.array_equal(result, original[:, ::-1]) for original, result in pairs]
    kept = [np.array_equal(result, original) for original, result in pairs]
    assert all(a != b for a, b in zip(mirrored, kept, strict=True))
    assert 10 < sum(mirrored) < 54


def test_cutout_blacks_out_part_of_some_images():
    images = tf.ones((64, 28, 28, 1))
    erased = augment_batch(images, Augmentation(cutout=8), generator()).numpy()
    black = (erased == 0).reshape(64, -1).sum(axis=1)
    assert np.all(black <= 64) and 10 < np.count_nonzero(black) < 54
    assert set(np.unique(erased)) <= {0.0, 1.0}


def test_rotation_and_zoom_keep_shape_and_range():
    images = tf.random.uniform((8, 28, 28, 1), seed=1)
    warped = augment_batch(images, Augmentation(rotation=15, zoom=0.1), generator())
    assert warped.shape == images.shape
    assert float(tf.reduce_min(warped)) >= 0 and float(tf.reduce_max(warped)) <= 1
    assert not np.allclose(warped.numpy(), images.numpy())
    unchanged = augment_batch(images, Augmentation(rotation=1e-6), generator())
    np.testing.assert_allclose(unchanged.numpy(), images.numpy(), atol=1e-4)


def test_digits_are_never_mirrored():
    for profiles in PROFILES.values():
        augmentation = profiles["mnist"].augmentation
        assert augmentation is None or not augmentation.flip
        assert not profiles["mnist"].flip_test_time


def test_one_cycle_rises_then_falls_to_zero():
    schedule = OneCycle(0.4, total_steps=100, warmup_fraction=0.25)
    rates = [float(schedule(step)) for step in (0, 10, 25, 50, 100, 120)]
    assert rates == pytest.approx([0.0, 0.16, 0.4, 0.4 * 50 / 75, 0.0, 0.0])
    assert OneCycle.from_config(schedule.get_config()).get_config() == schedule.get_config()


def test_flip_averaging_is_the_mean_over_the_mirror_image():
    model = build_model("cifar10", profile="tiny")
    images = np.random.default_rng(0).random((3, 32, 32, 3), dtype=np.float32)
    averaged = with_flip_averaging(model).predict(images, verbose=0)
    expected = (model.predict(images, verbose=0) + model.predict(images[:, :, ::-1], verbose=0)) / 2
    np.testing.assert_allclose(averaged, expected, atol=1e-6)
    np.testing.assert_allclose(averaged.sum(axis=1), 1, atol=1e-5)


@pytest.mark.parametrize("profile", ["cpu", "full"])
@pytest.mark.parametrize("name", list(DATASETS))
def test_profile_networks_build(name, profile):
    spec = DATASETS[name]
    model = build_model(name, profile, steps_per_epoch=10)
    assert model.input_shape == (None, spec.height, spec.width, spec.channels)
    assert model.output_shape == (None, 10)
    assert model.count_params() < 10_000_000  # small enough to serve fast
    keras.backend.clear_session()


def test_outlier_exposure_adds_shifted_copies_labelled_uniform():
    """Each copy is its own image turned or with its channels swapped, labelled 1/K for every class and
    weighted so that Keras's loss is the images' mean loss plus λ times the copies'; copies that equal
    their image (channels of a grey photo swapped) weigh nothing."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (16, 8, 8, 3), dtype=np.uint8)
    images[:4] = images[:4, :, :, :1]  # grey: every channel the same
    labels = np.arange(16) % 10
    (batch_images, batch_labels, weights), = training_dataset(
        images, labels, batch_size=16, num_classes=10, seed=2, outlier_exposure=0.25).take(1)
    assert batch_images.shape == (24, 8, 8, 3) and batch_labels.shape == (24, 10) and weights.shape == (24,)
    np.testing.assert_array_equal(batch_labels[16:], np.full((8, 10), 0.1, np.float32))
    np.testing.assert_array_equal(weights[:16], np.full(16, 1.5))  # 24 rows of which 16 images
    originals = {(image / np.float32(255)).astype(np.float32).tobytes() for image in images}
    kinds = set()
    for copy, weight, original in zip(batch_images[16:].numpy(), weights[16:].numpy(),
                                      batch_images[:8].numpy(), strict=True):
        assert original.tobytes() in originals  # the batch starts with the (shuffled) images themselves
        shifts = {**{f"channels {order}": original[..., list(order)] for order in PERMUTATIONS},
                  **{f"turn {turns}": np.rot90(original, turns) for turns in (1, 2, 3)}}
        kind = next(name for name, shifted in shifts.items() if np.array_equal(shifted, copy))
        kinds.add(kind.split()[0])
        assert weight == (0.75 if np.mean(np.abs(copy - original)) > MIN_DIFFERENCE else 0.0), kind
    assert kinds == {"channels", "turn"}
    # What the weights are for: Keras averages over all 24 rows, yet the loss is Hendrycks et al.'s.
    answers = tf.nn.softmax(tf.random.stateless_normal((24, 10), seed=(1, 2)))
    loss = keras.losses.CategoricalCrossentropy()(batch_labels, answers, sample_weight=weights)
    each = keras.losses.categorical_crossentropy(batch_labels, answers).numpy()
    counted = weights[16:].numpy() > 0
    expected = each[:16].mean() + 0.25 * np.sum(each[16:] * counted) / 8
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_shifted_copies_of_grey_photos_weigh_nothing_unless_turned():
    """A grey photo with its channels swapped is the same photo: no outlier. Turned, it is one."""
    grey = np.random.default_rng(1).random((64, 8, 8, 1), dtype=np.float32).repeat(3, axis=-1)
    copies, differs = shifted_copies(tf.constant(grey), generator())
    turned = [not np.array_equal(copy, image) for copy, image in zip(copies.numpy(), grey, strict=True)]
    np.testing.assert_array_equal(differs.numpy(), np.array(turned, np.float32))
    assert 0 < sum(turned) < len(grey)  # both kinds were drawn


def test_outlier_exposure_needs_colour_channels():
    with pytest.raises(ValueError, match="3, not 1"):
        shifted_copies(tf.zeros((2, 8, 8, 1)), generator())


def test_training_accuracy_counts_only_the_images_with_a_class():
    accuracy = LabelledAccuracy()
    truth = np.array([[1, 0, 0], [0, 1, 0], [1 / 3] * 3, [1 / 3] * 3], np.float32)
    answers = np.array([[0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.9, 0.05, 0.05], [0.1, 0.8, 0.1]], np.float32)
    accuracy.update_state(truth, answers)
    assert float(accuracy.result()) == 0.5  # one of the two labelled images; the uniform rows don't count


def test_a_shift_head_learns_which_way_up_its_photos_are():
    """ShiftHeadTrainer: the classifier trains as before (its history has the same keys) and answers the
    same through it, and the head learns to tell images from their shifted copies: here warm photos lit
    from above, against the same turned or with their colour channels swapped."""
    rng = np.random.default_rng(3)
    light = np.linspace(1.0, 0.2, 32)[None, :, None, None] * np.array([1.0, 0.7, 0.4])
    images = np.clip(255 * light * rng.uniform(0.6, 1.0, (480, 32, 32, 1)), 0, 255).astype(np.uint8)
    labels = rng.integers(0, 10, len(images))
    model = build_model("cifar10", "tiny", steps_per_epoch=20)
    trainer = ShiftHeadTrainer(model, weight=1.0)
    history = trainer.fit(training_dataset(images, labels, batch_size=24, num_classes=10, seed=1,
                                           outlier_exposure=0.25), epochs=3, verbose=0).history
    assert set(history) == {"loss", "accuracy"}
    inputs = tf.constant(images[:200] / np.float32(255))
    np.testing.assert_array_equal(trainer.predict(inputs, verbose=0), model.predict(inputs, verbose=0))
    kernel, bias = trainer.head_weights()
    assert kernel.dtype == np.float32 and kernel.shape[1] == 1 and bias.shape == (1,)

    def head_logits(images):  # the classifier's input, from the trainer's own feature model
        return (trainer.features.predict(images, verbose=0)[1] @ kernel + bias)[:, 0]

    own = head_logits(inputs)
    for shifted in (tf.image.rot90(inputs, 2), tf.gather(inputs, (2, 1, 0), axis=-1)):
        assert auroc(own, head_logits(shifted)) > 0.95
    keras.backend.clear_session()
