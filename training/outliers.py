"""Outlier exposure with shifted photos: training batches also hold copies of their images turned a
quarter, half or three quarters round or with their colour channels swapped, which the network learns
to answer with the uniform distribution (Hendrycks et al. 2019's outlier exposure, with the shifted
instances of Tack et al. 2020 as the outliers: no data set is needed beyond the training images).

A network trained so is less confident on images unlike its training data, so the energy and the
softmax of its answers tell them apart better (docs/training.md, "Out-of-distribution score"). It is
for photos only: a turned digit can be another digit, and one's own folders may hold images at any
angle. None of it is part of the exported graph. A shift head (shift_head.py) can learn from the same
copies to tell them from the images.
"""

import keras
import tensorflow as tf

# A shifted copy that barely differs from its image (a grey photo with its channels swapped, a
# symmetric one turned) is still that image: its weight is zero. Mean absolute difference, of [0, 1].
MIN_DIFFERENCE = 0.03
PERMUTATIONS = ((0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))  # all but the identity


def outlier_rows(labels):
    """float32 [N]: 1.0 where a label row is an outlier's uniform answer, 0.0 where it names a class.
    One-hot rows have a 1; the uniform rows of two or more classes at most 0.5."""
    return keras.ops.cast(keras.ops.max(labels, axis=-1) <= 0.5, "float32")


def shifted_copies(images, generator):
    """(copies, differs) of a float32 batch [B, H, W, 3]: each image shifted one of 8 ways drawn from
    `generator` (3 turns, 5 channel orders), and 1.0 where the copy differs from its image."""
    if images.shape[-1] != 3:
        raise ValueError(f"outlier exposure swaps colour channels: it needs 3, not {images.shape[-1]}")
    square = images.shape[1] == images.shape[2]
    candidates = [tf.gather(images, permutation, axis=-1) for permutation in PERMUTATIONS]
    if square:  # a turned non-square image would change shape; it keeps the channel swaps
        candidates += [tf.image.rot90(images, turns) for turns in (1, 2, 3)]
    count = tf.shape(images)[0]
    choice = generator.uniform([count], 0, len(candidates), dtype=tf.int32)
    copies = tf.gather_nd(tf.stack(candidates), tf.stack([choice, tf.range(count)], axis=1))
    difference = tf.reduce_mean(tf.abs(copies - images), axis=[1, 2, 3])
    return copies, tf.cast(difference > MIN_DIFFERENCE, tf.float32)


def with_outliers(images, one_hot, weight, generator):
    """(images, labels, sample weights): the batch, then shifted copies of its first half labelled
    with the uniform distribution. Keras averages the weighted loss over all rows, copies included, so
    the weights undo that: the loss is the images' mean loss plus `weight` times the copies' mean
    loss, Hendrycks et al.'s λ (copies that equal their image count as weighing nothing)."""
    count = tf.shape(images)[0]
    copies, differs = shifted_copies(images[: count // 2], generator)
    num_classes = one_hot.shape[-1]
    uniform = tf.fill([tf.shape(copies)[0], num_classes], 1.0 / num_classes)
    rows = tf.cast(count + tf.shape(copies)[0], tf.float32)
    weights = tf.concat([tf.fill([count], rows / tf.cast(count, tf.float32)),
                         weight * rows / tf.cast(tf.shape(copies)[0], tf.float32) * differs], axis=0)
    return tf.concat([images, copies], axis=0), tf.concat([one_hot, uniform], axis=0), weights
